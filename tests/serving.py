"""A real ``headstart serve`` process on a free loopback port, for the service and web-page tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT_S = 180.0  # two workers each import torch; a loaded 2-core CI machine took > 90 s


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A running service: its origin, process and log."""

    def __init__(self, origin: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.origin = origin
        self.process = process
        self.log = log
        self.port = int(origin.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.origin + path, timeout=30) as response:
            return json.loads(response.read())


@contextmanager
def running_server(bundle: Path, folder: Path, *options: str) -> Iterator[Server]:
    """Start ``headstart serve BUNDLE`` (own cache in ``folder``), wait for ``/health``, stop it afterwards."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HEADSTART_CACHE=str(folder / "cache"), PYTHONUNBUFFERED="1")
    log = folder / "serve.log"
    command = [sys.executable, "-m", "headstart.cli", "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port),
               *options]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=folder)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"`headstart serve` exited with {process.returncode} before answering /health:\n"
                            f"{server.output()}")
            try:
                with urllib.request.urlopen(server.origin + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`headstart serve` did not answer GET /health within {START_TIMEOUT_S:.0f} s:\n"
                            f"{server.output()}")
            time.sleep(0.25)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
