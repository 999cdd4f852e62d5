"""`headstart serve` flooded with hostile traffic (issue 19): does it keep serving good requests?

Three phases against one server on 127.0.0.1, each a fixed time, from a client in a second process:

1. baseline: ``--good`` clients send hymenoptera val photos (one JPEG per multipart request), back to back;
2. flood: the same good clients, plus ``--hostile`` clients (default 72: with the 8 good ones, 10x the 8 that
   saturate the service) cycling through 20 MiB uploads, 40-megapixel one-bit PNG bombs (5 KB each), requests of
   64 images over the per-request pixel budget, junk bytes, and slow bodies (1 KB per 0.2 s);
3. after: the good clients alone again.

Printed: good requests answered 200 per second in each phase and the flood/baseline ratio (goal >= 0.8), the good
requests' p50/p99 latency, every status code by client kind, 5xx other than 503 (goal 0), connection errors, and
the server's peak resident memory (process tree, sampled every 0.1 s; documented bound 2 GB).

    .venv/bin/python bench/hostile_load.py [--bundle PATH] [--seconds 20] [--good 8] [--hostile 72]
        [--json bench/results/issue19/hostile_load.json]

Without ``--bundle`` an EfficientNet-Lite0 linear probe is trained on hymenoptera first (about 1-2 minutes; kept
in the temporary folder of the run). The client never sends to anything but 127.0.0.1, and every phase ends by
itself after ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import (  # noqa: E402 - the load generator's pieces are shared with bench/serve_load.py
    DATA,
    RawConnection,
    ensure_bundle,
    free_port,
    multipart_body,
    percentiles,
    photo_paths,
    raw_request,
    stop_server,
    wait_healthy,
)

BOUNDARY = "headstart-load-boundary-7d1f"


# -- hostile inputs -----------------------------------------------------------------------------------------------

def bomb_png(width: int = 8000, height: int = 5000) -> bytes:
    """A one-bit PNG of width x height pixels: a few KB that decode to width*height*3 bytes of RGB."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (width, height), 0).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def many_images_body(image: bytes, count: int) -> bytes:
    parts = [(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{i}.png\"\r\n"
              "Content-Type: image/png\r\n\r\n").encode() + image + b"\r\n" for i in range(count)]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def one_shot(port: int, raw: bytes, *, trickle: float | None = None) -> str:
    """Send ``raw`` on a new connection and return the status (or what went wrong); ``trickle``: seconds between
    1 KB chunks of the body (a slow client)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "connect-error"
    try:
        if trickle is None:
            writer.write(raw)
            await writer.drain()
        else:
            head, body = raw.split(b"\r\n\r\n", 1)
            writer.write(head + b"\r\n\r\n")
            for start in range(0, len(body), 1024):
                writer.write(body[start:start + 1024])
                await writer.drain()
                await asyncio.sleep(trickle)
        line = await asyncio.wait_for(reader.readline(), 60)
        return line.split(b" ", 2)[1].decode() if line.startswith(b"HTTP/") else "no-response"
    except (ConnectionError, asyncio.IncompleteReadError):
        return "closed-by-server"
    except (TimeoutError, asyncio.TimeoutError):
        return "client-timeout"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def client(args: argparse.Namespace) -> dict[str, Any]:
    port = args.port
    photos = [p.read_bytes() for p in photo_paths(DATA / "val")][:64]
    good_requests = [raw_request("POST", "/predict", "127.0.0.1", port, multipart_body(f"{i}.jpg", data),
                                 f"multipart/form-data; boundary={BOUNDARY}") for i, data in enumerate(photos)]
    bomb = bomb_png()
    medium = bomb_png(2000, 2000)  # 4 MP each: 64 of them pass the per-request pixel budget
    rng = random.Random(0)
    hostile_kinds = {
        "huge-upload": lambda: raw_request("POST", "/predict", "127.0.0.1", port, rng.randbytes(20 * 2**20 - 64),
                                           "image/jpeg"),
        "png-bomb": lambda: raw_request("POST", "/predict", "127.0.0.1", port, bomb, "image/png"),
        "over-pixel-budget": lambda: raw_request("POST", "/predict", "127.0.0.1", port,
                                                 many_images_body(medium, 64),
                                                 f"multipart/form-data; boundary={BOUNDARY}"),
        "junk": lambda: raw_request("POST", "/predict", "127.0.0.1", port, rng.randbytes(50_000), "image/jpeg"),
        "slow-body": lambda: raw_request("POST", "/predict", "127.0.0.1", port, photos[0][:20_000], "image/jpeg"),
    }
    names = list(hostile_kinds)
    huge = hostile_kinds["huge-upload"]()  # built once: 20 MiB of random bytes per request would be the client's CPU
    results: dict[str, Any] = {}

    async def good_worker(index: int, stop: float, latencies: list[float], statuses: Counter) -> None:
        connection = RawConnection("127.0.0.1", port)
        i = index
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                status, _ = await connection.request(good_requests[i % len(good_requests)])
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                statuses["connection-error"] += 1
                await connection.close()
                continue
            statuses[str(status)] += 1
            if status == 200:
                latencies.append(1000 * (time.perf_counter() - started))
            i += 1
        await connection.close()

    async def hostile_worker(index: int, stop: float, statuses: dict[str, Counter]) -> None:
        kind_index = index
        while time.perf_counter() < stop:
            kind = names[kind_index % len(names)]
            kind_index += 1
            raw = huge if kind == "huge-upload" else hostile_kinds[kind]()
            status = await one_shot(port, raw, trickle=0.2 if kind == "slow-body" else None)
            statuses[kind][status] += 1

    for phase, hostile in (("baseline", 0), ("flood", args.hostile), ("after", 0)):
        latencies: list[float] = []
        good_statuses: Counter = Counter()
        hostile_statuses: dict[str, Counter] = {name: Counter() for name in names}
        started = time.perf_counter()
        stop = started + args.seconds
        cpu = time.process_time()
        await asyncio.gather(*[good_worker(i, stop, latencies, good_statuses) for i in range(args.good)],
                             *[hostile_worker(i, stop, hostile_statuses) for i in range(hostile)])
        wall = time.perf_counter() - started
        results[phase] = {
            "seconds": round(wall, 1), "good_per_second": round(len(latencies) / wall, 2),
            "good_latency_ms": percentiles(latencies), "good_statuses": dict(good_statuses),
            "hostile_statuses": {k: dict(v) for k, v in hostile_statuses.items() if v},
            "client_cpu_cores": round((time.process_time() - cpu) / wall, 2),
        }
        print(json.dumps({phase: results[phase]}), file=sys.stderr, flush=True)
    return results


def client_main(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(client(args))), flush=True)
    return 0


# -- the run --------------------------------------------------------------------------------------------------------

def sample_memory(pid: int, stop: list[bool], peaks: list[float]) -> None:
    import psutil

    root = psutil.Process(pid)
    while not stop:
        try:
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            rss = 0
        peaks.append(rss / 2**20)
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--good", type=int, default=8)
    parser.add_argument("--hostile", type=int, default=72)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args)
    import threading

    with tempfile.TemporaryDirectory(prefix="headstart-hostile-") as folder:
        workdir = Path(folder)
        bundle, trained = ensure_bundle(argparse.Namespace(bundle=args.bundle, image_size=None), workdir)
        port = free_port()
        log = workdir / "serve.log"
        command = [sys.executable, "-m", "headstart.cli", "serve", str(bundle), "--host", "127.0.0.1",
                   "--port", str(port)]
        with log.open("wb") as sink:
            server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                      env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True)
        try:
            wait_healthy(server, f"http://127.0.0.1:{port}", 600, log)
            stop: list[bool] = []
            peaks: list[float] = []
            sampler = threading.Thread(target=sample_memory, args=(server.pid, stop, peaks), daemon=True)
            sampler.start()
            result = subprocess.run([sys.executable, __file__, "--client", "--port", str(port), "--seconds",
                                     str(args.seconds), "--good", str(args.good), "--hostile", str(args.hostile)],
                                    capture_output=True, text=True, timeout=args.seconds * 3 + 300)
            stop.append(True)
            sampler.join()
            if result.returncode != 0:
                print(result.stderr[-3000:])
                return 1
            phases = json.loads(result.stdout.strip().splitlines()[-1])
            alive = server.poll() is None
        finally:
            stop_server(server)
        server_log = log.read_text(errors="replace")
    baseline, flood = phases["baseline"]["good_per_second"], phases["flood"]["good_per_second"]
    statuses: Counter = Counter()
    for phase in phases.values():
        statuses.update(phase["good_statuses"])
        for counts in phase["hostile_statuses"].values():
            statuses.update(counts)
    bad_5xx = {code: n for code, n in statuses.items() if code.isdigit() and code.startswith("5") and code != "503"}
    summary = {
        "good_per_second": {name: phase["good_per_second"] for name, phase in phases.items()},
        "flood_over_baseline": round(flood / baseline, 3) if baseline else None,
        "good_p99_ms": {name: phase["good_latency_ms"]["p99"] for name, phase in phases.items()},
        "good_p50_ms": {name: phase["good_latency_ms"]["p50"] for name, phase in phases.items()},
        "statuses": dict(statuses), "other_5xx": bad_5xx, "server_alive_after": alive,
        "peak_rss_mb": round(max(peaks), 1) if peaks else None, "internal_errors_logged":
            server_log.count("Internal error"),
        "clients": {"good": args.good, "hostile": args.hostile}, "seconds_per_phase": args.seconds,
        "bundle": trained,
    }
    print(f"good requests/s: baseline {baseline}, flood {flood} ({summary['flood_over_baseline']}x; goal >= 0.8),"
          f" after {phases['after']['good_per_second']}")
    print(f"good p50 / p99 ms: " + ", ".join(f"{n} {summary['good_p50_ms'][n]} / {summary['good_p99_ms'][n]}"
                                              for n in phases))
    print(f"statuses: {dict(sorted(statuses.items()))}; 5xx other than 503: {bad_5xx or 0} (goal 0)")
    for name, phase in phases.items():
        print(f"  {name}: good {phase['good_statuses']}, hostile {phase['hostile_statuses']},"
              f" client CPU {phase['client_cpu_cores']} cores")
    print(f"server peak RSS {summary['peak_rss_mb']} MB (bound 2048 MB); alive after: {alive}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "phases": phases}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
