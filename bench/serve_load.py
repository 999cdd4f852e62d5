"""`headstart serve` under load: an async HTTP client in a second process on loopback sends hymenoptera val
photos (one JPEG per request, multipart field ``file``) at concurrency 1, 8 and 32 and measures throughput and
p50/p90/p99 latency, next to raw ONNX Runtime in-process on the same photos and the same model.onnx.

    .venv/bin/python bench/serve_load.py [--bundle PATH] [--seconds 20] [--concurrency 1,8,32]
        [--workers 1] [--backend auto] [--max-batch 8] [--batch-window-ms 4] [--json bench/results/serve_load.json]

Without ``--bundle`` (or with one that does not exist yet) an EfficientNet-Lite0 linear probe is trained on
hymenoptera first (about 1-2 min; saved to ``--bundle`` when given, so later runs reuse it).

Goals: service throughput at concurrency 32 >= 0.8x raw ONNX Runtime batch-32 throughput (pre-decoded
arrays); service p50 latency at concurrency 1 <= 2x the raw single-image forward (median).

The development machine is a shared VM whose speed drifts by up to ~1.7x within minutes with nothing else
running in it, so each load level is held against raw figures taken just before and just after it: a short raw
check (batch-32 throughput, 1-image latency) runs in this process between the levels while the server sits idle.
The full raw figures (batch 32 and 8, one image, with JPEG decoding included) are taken after the server stopped.

Raw ONNX Runtime never runs while the service is under load. The client is a minimal HTTP/1.1
keep-alive client on asyncio streams (``--client-impl httpx`` for httpx.AsyncClient); its own CPU time per
request is measured and printed, as is the CPU the server used and what other processes took meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "images" / "hymenoptera"
BOUNDARY = "headstart-load-boundary-7d1f"


def photo_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def percentiles(values: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(array, 50)), 2), "p90": round(float(np.percentile(array, 90)), 2),
            "p99": round(float(np.percentile(array, 99)), 2), "mean": round(float(array.mean()), 2),
            "max": round(float(array.max()), 2)}


# ----------------------------------------------------------------------------------------------------------------
# The load generator (runs in its own process: ``--client``)
# ----------------------------------------------------------------------------------------------------------------

def multipart_body(name: str, data: bytes) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


class RawConnection:
    """One HTTP/1.1 keep-alive connection on asyncio streams (only what this benchmark needs)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await self.reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body


def raw_request(method: str, path: str, host: str, port: int, body: bytes = b"", content_type: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    if method == "POST":
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Sampler:
    """CPU time of the server's process tree, of this client and of the whole machine (psutil, when installed)."""

    def __init__(self, server_pid: int | None) -> None:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil is in the dev environment
            psutil = None
        self.psutil = psutil
        self.server = psutil.Process(server_pid) if psutil and server_pid else None

    def sample(self) -> dict[str, float]:
        out = {"wall": time.perf_counter(), "client": time.process_time()}
        if self.psutil is None:
            return out
        times = self.psutil.cpu_times()
        out["busy"] = sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
        if self.server is not None:
            total = 0.0
            try:
                for process in [self.server, *self.server.children(recursive=True)]:
                    cpu = process.cpu_times()
                    total += cpu.user + cpu.system
            except self.psutil.Error:
                pass
            out["server"] = total
        return out

    @staticmethod
    def cores(start: dict[str, float], end: dict[str, float]) -> dict[str, float | None]:
        wall = end["wall"] - start["wall"]
        used = {key: (end[key] - start[key]) / wall if key in start and key in end else None
                for key in ("client", "server", "busy")}
        other = None
        if None not in (used["busy"], used["server"], used["client"]):
            other = used["busy"] - used["server"] - used["client"]  # type: ignore[operator]
        return {"client": used["client"], "server": used["server"], "machine": used["busy"], "other": other}


async def load(args: argparse.Namespace) -> dict[str, Any]:
    host, port = args.host, args.port
    paths = photo_paths(Path(args.data))
    photos = [(p.name, p.read_bytes()) for p in paths]
    if args.client_impl == "raw":
        requests = [raw_request("POST", "/predict", host, port, multipart_body(name, data),
                                f"multipart/form-data; boundary={BOUNDARY}") for name, data in photos]
    async def health() -> dict[str, Any]:
        connection = RawConnection(host, port)  # a fresh one: an idle keep-alive connection is closed after 5 s
        try:
            status, body = await connection.request(raw_request("GET", "/health", host, port))
        finally:
            await connection.close()
        return json.loads(body) if status == 200 else {"status": status}

    sampler = Sampler(args.server_pid)
    phase = {"measuring": False, "stop": False}
    latencies: list[float] = []
    server_timing: dict[str, list[float]] = {"decode": [], "inference": [], "total": []}
    errors: dict[str, int] = {}
    first_errors: list[str] = []
    counter = {"next": 0, "done": 0, "warmup_done": 0}

    def record_error(key: str, text: str) -> None:
        errors[key] = errors.get(key, 0) + 1
        if len(first_errors) < 5:
            first_errors.append(f"{key}: {text[:300]}")

    async def worker(index: int) -> None:
        connection = RawConnection(host, port) if args.client_impl == "raw" else None
        client = None
        if args.client_impl == "httpx":
            import httpx

            client = httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=60.0,
                                       limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        try:
            while not phase["stop"]:
                item = counter["next"] % len(photos)
                counter["next"] += 1
                measuring = phase["measuring"]
                started = time.perf_counter()
                try:
                    if client is not None:
                        name, data = photos[item]
                        response = await client.post("/predict", files={"file": (name, data, "image/jpeg")})
                        status, body = response.status_code, response.content
                    else:
                        status, body = await connection.request(requests[item])  # type: ignore[union-attr]
                except Exception as error:  # noqa: BLE001 - every failure is counted and reported
                    if connection is not None:
                        await connection.close()
                    if measuring and phase["measuring"]:
                        record_error(type(error).__name__, str(error))
                    continue
                elapsed = 1000 * (time.perf_counter() - started)
                if not (measuring and phase["measuring"]):  # warm-up, or ended after the window closed
                    counter["warmup_done"] += 1
                    continue
                if status != 200:
                    record_error(f"HTTP {status}", body.decode("utf-8", "replace"))
                    continue
                counter["done"] += 1
                latencies.append(elapsed)
                if args.parse_timing:
                    timing = json.loads(body).get("timing_ms", {})
                    for key, values in server_timing.items():
                        if key in timing:
                            values.append(float(timing[key]))
        finally:
            if connection is not None:
                await connection.close()
            if client is not None:
                await client.aclose()

    tasks = [asyncio.create_task(worker(i)) for i in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    before = await health()
    start = sampler.sample()
    phase["measuring"] = True
    await asyncio.sleep(args.seconds)
    phase["measuring"] = False
    end = sampler.sample()
    after = await health()
    phase["stop"] = True
    await asyncio.gather(*tasks, return_exceptions=True)
    window = end["wall"] - start["wall"]
    batches = after.get("batches", 0) - before.get("batches", 0)
    items = after.get("batched_items", 0) - before.get("batched_items", 0)
    cores = Sampler.cores(start, end)
    done = counter["done"]
    return {
        "concurrency": args.concurrency, "client": args.client_impl, "window_s": round(window, 3),
        "completed": done, "throughput_rps": round(done / window, 2),
        "latency_ms": percentiles(latencies), "errors": sum(errors.values()), "error_kinds": errors,
        "first_errors": first_errors,
        "server_timing_ms": {key: percentiles(values) for key, values in server_timing.items()},
        "health": {"batches": batches, "batched_items": items, "after": after,
                   "mean_batch": round(items / batches, 2) if batches and args.workers == 1 else None,
                   "note": None if args.workers == 1 else "counters are per worker process and /health is answered"
                   " by any one of them, so deltas are meaningless with --workers > 1"},
        "cpu_cores": {key: None if value is None else round(value, 3) for key, value in cores.items()},
        "client_cpu_ms_per_request": round(1000 * cores["client"] * window / done, 3) if done and cores["client"] else None,
        "server_cpu_ms_per_request": round(1000 * cores["server"] * window / done, 2) if done and cores["server"] else None,
    }


def client_main(args: argparse.Namespace) -> int:
    result = asyncio.run(load(args))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# The orchestrator: bundle, server, client runs, raw ONNX Runtime
# ----------------------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def ensure_bundle(args: argparse.Namespace, workdir: Path) -> tuple[Path, dict[str, Any]]:
    target = args.bundle or workdir / "model"
    if (target / "config.json").is_file():
        print(f"bundle: {target} (reused)", flush=True)
        return target, {"trained": False}
    from headstart import ImageClassifier

    print(f"bundle: training a linear probe on {DATA / 'train'} -> {target} ...", flush=True)
    started = time.perf_counter()
    classifier = ImageClassifier(strategy="linear_probe", progress=False, image_size=args.image_size)
    classifier.fit(DATA / "train", val=DATA / "val")
    classifier.save(target)
    seconds = time.perf_counter() - started
    print(f"bundle: trained in {seconds:.0f} s, val accuracy {classifier.metrics_['accuracy']['value']:.3f}", flush=True)
    return target, {"trained": True, "train_seconds": round(seconds, 1),
                    "val_accuracy": classifier.metrics_["accuracy"]["value"]}


def start_server(args: argparse.Namespace, bundle: Path, port: int, log_path: Path) -> tuple[subprocess.Popen, list[str]]:
    executable = Path(sys.executable).parent / "headstart"
    command = [str(executable) if executable.exists() else sys.executable, *([] if executable.exists() else
                                                                              ["-m", "headstart.cli"]),
               "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
               "--backend", args.backend, "--max-batch", str(args.max_batch),
               "--batch-window-ms", str(args.batch_window_ms)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    log = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
                               start_new_session=True)
    return process, command


def wait_healthy(process: subprocess.Popen, url: str, timeout: float, log_path: Path) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            return get_json(url + "/health", timeout=2.0)
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server did not answer /health within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_client(args: argparse.Namespace, port: int, concurrency: int, server_pid: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--client", "--port", str(port),
               "--concurrency", str(concurrency), "--seconds", str(args.seconds), "--warmup", str(args.warmup),
               "--server-pid", str(server_pid), "--data", str(args.data), "--client-impl", args.client_impl,
               "--workers", str(args.workers)]
    if not args.parse_timing:
        command.append("--no-parse-timing")
    completed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=args.seconds + args.warmup + 180)
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the load client failed ({completed.returncode}):\n{completed.stderr[-3000:]}")


def find_export(bundle: Path, workdir: Path) -> tuple[Path, str]:
    """The model.onnx the server ran (its export cache), else a fresh export into ``workdir``."""
    from headstart.deploy.export import MODEL_FILES, export_bundle
    from headstart.deploy.predictor import load_predictor
    from headstart.deploy.serve.app import _export_cache

    cached = _export_cache(load_predictor(bundle)) / MODEL_FILES["onnx"]
    if cached.is_file():
        return cached, "the server's export cache"
    folder = workdir / "export"
    export_bundle(bundle, folder, format="onnx")
    return folder / MODEL_FILES["onnx"], "a fresh export (the server did not use ONNX Runtime)"


class RawOrt:
    """Raw ONNX Runtime in this process on the photos decoded once: the reference the service is held against."""

    def __init__(self, bundle: Path, onnx_path: Path, photos: list[bytes], *, threads: int | None) -> None:
        from headstart.deploy.predictor import load_predictor

        self.predictor = load_predictor(bundle)
        self.predictor.use_onnx(onnx_path, threads=threads)
        self.photos = photos
        started = time.process_time()
        self.decoded = [self.predictor.decode(data, name=f"photo {i}") for i, data in enumerate(photos)]
        self.decode_ms = 1000 * (time.process_time() - started) / len(photos)
        self.singles = [self.predictor.collate([item]) for item in self.decoded]
        self.threads = self.predictor.backend.session.get_session_options().intra_op_num_threads
        self.sampler = Sampler(None)

    def other_cores(self, start: dict[str, float]) -> float | None:
        """CPU cores other processes used since ``start`` (contention during a raw measurement)."""
        other = Sampler.cores(start, self.sampler.sample())
        return None if other["machine"] is None else round(other["machine"] - other["client"], 3)

    def batch_throughput(self, size: int, seconds: float) -> dict[str, Any]:
        n, run = len(self.decoded), self.predictor.run
        batches = [self.predictor.collate([self.decoded[(k * size + j) % n] for j in range(size)]) for k in range(8)]
        for batch in batches[:2]:
            run(batch)
        images, runs, begin, start = 0, 0, time.perf_counter(), self.sampler.sample()
        while time.perf_counter() - begin < seconds or runs < 3:
            run(batches[runs % len(batches)])
            images += size
            runs += 1
        wall = time.perf_counter() - begin
        return {"batch": size, "images_per_s": round(images / wall, 2), "ms_per_batch": round(1000 * wall / runs, 2),
                "runs": runs, "other_cores": self.other_cores(start)}

    def single_latency(self, runs: int) -> dict[str, Any]:
        n = len(self.singles)
        for batch in self.singles[:5]:
            self.predictor.run(batch)
        times, start = [], self.sampler.sample()
        for k in range(runs):
            begin = time.perf_counter()
            self.predictor.run(self.singles[k % n])
            times.append(1000 * (time.perf_counter() - begin))
        return {**percentiles(times), "runs": runs, "other_cores": self.other_cores(start)}

    def check(self, seconds: float) -> dict[str, Any]:
        """The two reference figures, briefly: taken between the service's load levels (server idle)."""
        return {"at": time.time(), "batch32": self.batch_throughput(32, seconds),
                "single_latency_ms": self.single_latency(100)}

    def full(self, seconds: float) -> dict[str, Any]:
        """Everything, with the server stopped: batch 32 and 8, one image, and with JPEG decoding included."""
        predictor, photos, n = self.predictor, self.photos, len(self.photos)
        batch32, batch8 = self.batch_throughput(32, seconds), self.batch_throughput(8, seconds)
        single = self.single_latency(max(100, n))
        # one JPEG -> decode + preprocess -> forward, one at a time: what a lone request needs at the least
        one_by_one, start = [], self.sampler.sample()
        for k in range(max(100, n)):
            begin = time.perf_counter()
            predictor.run(predictor.collate([predictor.decode(photos[k % n])]))
            one_by_one.append(1000 * (time.perf_counter() - begin))
        one_by_one_other = self.other_cores(start)
        # JPEG bytes -> decode + preprocess (one thread) -> batch of 32 -> forward, sequentially
        images, k, begin, start = 0, 0, time.perf_counter(), self.sampler.sample()
        while time.perf_counter() - begin < seconds or images < n:
            chunk = [photos[(k * 32 + j) % n] for j in range(32)]
            predictor.run(predictor.collate([predictor.decode(data) for data in chunk]))
            images += 32
            k += 1
        with_decode = images / (time.perf_counter() - begin)
        return {"threads": self.threads, "input_shape": list(self.decoded[0].shape),
                "decode_preprocess_ms_per_image_cpu": round(self.decode_ms, 2), "batch32": batch32, "batch8": batch8,
                "single_latency_ms": single, "decode_single_latency_ms": {**percentiles(one_by_one),
                                                                          "other_cores": one_by_one_other},
                "with_decode_batch32": {"images_per_s": round(with_decode, 2), "other_cores": self.other_cores(start)}}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("headstart", "torch", "onnxruntime", "fastapi", "uvicorn", "starlette", "h11", "httptools", "uvloop",
                 "httpx", "numpy", "pillow", "python-multipart"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model folder to serve (trained there first when it does not exist; default: a temp one)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size when training the bundle (default: the estimator's, 288 for a linear probe)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per concurrency")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per concurrency (not counted)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torch"))
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-window-ms", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=None, help="server --threads (default: the server's, all cores)")
    parser.add_argument("--raw-threads", type=int, default=None,
                        help="raw ONNX Runtime intra-op threads (default: torch's, i.e. all cores: the best case)")
    parser.add_argument("--raw-seconds", type=float, default=8.0, help="steady-state seconds per raw ORT figure")
    parser.add_argument("--check-seconds", type=float, default=4.0,
                        help="seconds of each short raw batch-32 check taken between the load levels")
    parser.add_argument("--client-impl", default="raw", choices=("raw", "httpx"),
                        help="load generator: asyncio streams (default, lightest) or httpx.AsyncClient")
    parser.add_argument("--data", type=Path, default=DATA / "val", help="photos sent (and decoded for raw ORT)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the temp folder (server log, ONNX export cache, a bundle trained without --bundle)")
    # the load generator's own options (``--client`` mode, started by the orchestrator)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-parse-timing", dest="parse_timing", action="store_false", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        args.concurrency = int(args.concurrency)
        return client_main(args)

    command_line = shlex.join([".venv/bin/python", "bench/serve_load.py", *(sys.argv[1:] if argv is None else argv)])
    levels = [int(c) for c in args.concurrency.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="headstart-serve-load-"))
    if not os.environ.get("HEADSTART_CACHE"):
        os.environ["HEADSTART_CACHE"] = str(workdir / "cache")  # cold: the server exports ONNX once, here
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with"
          f" {torch.get_num_threads()} threads; HEADSTART_CACHE={os.environ['HEADSTART_CACHE']}", flush=True)
    bundle, bundle_info = ensure_bundle(args, workdir)
    bundle_config = json.loads((bundle / "config.json").read_text())
    input_size = bundle_config.get("preprocessing", {}).get("input_size")
    paths = photo_paths(args.data)
    photos = [p.read_bytes() for p in paths]
    print(f"inputs: {len(photos)} photos from {args.data} ({sum(map(len, photos)) / len(photos) / 1024:.0f} KiB"
          f" mean); model input {input_size} px", flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "server.log"
    started = time.perf_counter()
    server, server_command = start_server(args, bundle, port, log_path)
    levels_out: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []

    def check(label: str) -> None:
        checks.append({"when": label, **raw.check(args.check_seconds)})
        last = checks[-1]
        print(f"  raw ORT check ({label}, server idle): batch 32 {last['batch32']['images_per_s']} images/s,"
              f" 1 image p50 {last['single_latency_ms']['p50']} ms", flush=True)

    try:
        health = wait_healthy(server, url, 180.0, log_path)
        startup = time.perf_counter() - started
        backend = health.get("backend")
        print(f"server: {shlex.join(server_command)}\nserver: up in {startup:.1f} s, backend {backend}", flush=True)
        onnx_path, onnx_source = find_export(bundle, workdir)
        raw = RawOrt(bundle, onnx_path, photos, threads=args.raw_threads)
        check(f"before concurrency {levels[0]}")
        for index, concurrency in enumerate(levels):
            result = run_client(args, port, concurrency, server.pid)
            levels_out.append(result)
            lat, cpu, hb = result["latency_ms"], result["cpu_cores"], result["health"]
            print(f"  concurrency {concurrency:>3}: {result['throughput_rps']:7.2f} req/s  p50 {lat['p50']} ms"
                  f"  p99 {lat['p99']} ms  errors {result['errors']}  batches {hb['batches']}"
                  f" (mean {hb['mean_batch']} images)  CPU cores server {cpu['server']} client {cpu['client']}"
                  f" other {cpu['other']}", flush=True)
            if result["errors"]:
                print(f"    errors: {result['error_kinds']} {result['first_errors'][:2]}", flush=True)
            check(f"after concurrency {concurrency}" if index == len(levels) - 1 else
                  f"between concurrency {concurrency} and {levels[index + 1]}")
    finally:
        stop_server(server)
    server_log = log_path.read_text(errors="replace")[-2000:]
    print(f"raw ONNX Runtime in-process on {onnx_path} ({onnx_source}), server stopped ...", flush=True)
    full = raw.full(args.raw_seconds)

    # each level is compared with the mean of the raw checks taken just before and just after it (the machine's
    # speed drifts on a shared host, so a reference taken minutes away can be off by tens of percent)
    for index, result in enumerate(levels_out):
        flank = checks[index:index + 2]
        result["raw_reference"] = {
            "batch32_images_per_s": round(sum(c["batch32"]["images_per_s"] for c in flank) / len(flank), 2),
            "single_p50_ms": round(sum(c["single_latency_ms"]["p50"] for c in flank) / len(flank), 2)}
    by_level = {r["concurrency"]: r for r in levels_out}
    top = by_level.get(32) or levels_out[-1]
    one = by_level.get(1) or levels_out[0]
    throughput_ratio = top["throughput_rps"] / top["raw_reference"]["batch32_images_per_s"]
    latency_ratio = one["latency_ms"]["p50"] / one["raw_reference"]["single_p50_ms"]
    throughput_ratio_full = top["throughput_rps"] / full["batch32"]["images_per_s"]
    latency_ratio_full = one["latency_ms"]["p50"] / full["single_latency_ms"]["p50"]
    batch_checks = [c["batch32"]["images_per_s"] for c in checks] + [full["batch32"]["images_per_s"]]
    single_checks = [c["single_latency_ms"]["p50"] for c in checks] + [full["single_latency_ms"]["p50"]]
    spread = max(max(batch_checks) / min(batch_checks), max(single_checks) / min(single_checks))

    print()
    print(f"headstart serve ({backend}, {args.workers} worker(s), max batch {args.max_batch}, window"
          f" {args.batch_window_ms:g} ms) vs raw ONNX Runtime ({full['threads']} threads), {input_size} px,"
          f" {len(photos)} photos, {args.seconds:g} s per level")
    header = (f"| {'load':<36} | {'images/s':>8} | {'p50 ms':>7} | {'p90 ms':>7} | {'p99 ms':>7} | {'errors':>6} |"
              f" {'mean batch':>10} | {'srv decode p50':>14} | {'srv infer p50':>13} | {'CPU srv/cli/other':>17} |")
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")

    def row(label: str, rate: float, p50: Any = "", p90: Any = "", p99: Any = "", errors: Any = "",
            batch: Any = "", decode: Any = "", infer: Any = "", cores: str = "") -> None:
        print(f"| {label:<36} | {rate:>8.2f} | {p50!s:>7} | {p90!s:>7} | {p99!s:>7} | {errors!s:>6} | {batch!s:>10} |"
              f" {decode!s:>14} | {infer!s:>13} | {cores:>17} |")

    def other(value: float | None) -> str:
        return "-" if value is None else f"-/-/{value:.2f}"

    for r in levels_out:
        lat, cpu, timing = r["latency_ms"], r["cpu_cores"], r["server_timing_ms"]
        cores = "/".join("-" if cpu[k] is None else f"{cpu[k]:.2f}" for k in ("server", "client", "other"))
        row(f"service, concurrency {r['concurrency']}", r["throughput_rps"], lat["p50"], lat["p90"], lat["p99"],
            r["errors"], r["health"]["mean_batch"], timing["decode"]["p50"], timing["inference"]["p50"], cores)
    for size in (32, 8):
        figure = full[f"batch{size}"]
        row(f"raw ORT, batch {size} (pre-decoded)", figure["images_per_s"], figure["ms_per_batch"], batch=size,
            cores=other(figure["other_cores"]))
    for label, figure in (("raw ORT, 1 image (pre-decoded)", full["single_latency_ms"]),
                          ("raw ORT, JPEG decode + 1 image", full["decode_single_latency_ms"])):
        row(label, 1000 / figure["p50"], figure["p50"], figure["p90"], figure["p99"], batch=1,
            cores=other(figure["other_cores"]))
    row("raw ORT, JPEG decode + batch 32", full["with_decode_batch32"]["images_per_s"], batch=32,
        cores=other(full["with_decode_batch32"]["other_cores"]))
    print("(service latency: client-side, request sent -> response read; srv decode / infer: the server's own"
          " timing_ms, body read + multipart parse + decode, then queue + forward + answer; raw batch rows: the p50"
          " column is ms per batch; CPU: cores used by the server / the load client / other processes on the"
          " machine, i.e. contention)")
    print("raw ORT reference checks (short, between the load levels, server up but idle):"
          + "".join(f"\n  {c['when']:<32} batch 32 {c['batch32']['images_per_s']:6.2f} images/s, 1 image p50"
                    f" {c['single_latency_ms']['p50']:6.2f} ms (other cores {c['batch32']['other_cores']})"
                    for c in checks))
    print(f"decode + preprocess {full['decode_preprocess_ms_per_image_cpu']} ms CPU per photo (one thread);"
          f" load client CPU {[r['client_cpu_ms_per_request'] for r in levels_out]} ms per request;"
          f" server CPU {[r['server_cpu_ms_per_request'] for r in levels_out]} ms per request")
    print(f"goal throughput: service at concurrency {top['concurrency']} {top['throughput_rps']:.2f} images/s / raw"
          f" batch 32 {top['raw_reference']['batch32_images_per_s']:.2f} (mean of the checks around it) ="
          f" {throughput_ratio:.2f} (goal >= 0.8): {'REACHED' if throughput_ratio >= 0.8 else 'NOT reached'}"
          f"  [{throughput_ratio_full:.2f} against the raw figure after the server stopped]")
    print(f"goal latency: service p50 at concurrency {one['concurrency']} {one['latency_ms']['p50']:.2f} ms / raw"
          f" 1-image median {one['raw_reference']['single_p50_ms']:.2f} ms (mean of the checks around it) ="
          f" {latency_ratio:.2f} (goal <= 2.0): {'REACHED' if latency_ratio <= 2.0 else 'NOT reached'}"
          f"  [{latency_ratio_full:.2f} against the raw figure after the server stopped]")
    if spread > 1.15:
        print(f"NOTE: the raw reference figures varied by {100 * (spread - 1):.0f}% during this run (batch 32:"
              f" {batch_checks} images/s; 1 image p50: {single_checks} ms) with no other process busy: the"
              " machine's own speed drifts (shared host). Compare the ratios, not the absolute figures.")

    results = {
        "command": command_line,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine(),
                    "torch_threads": torch.get_num_threads(), "load_average_after": os.getloadavg()},
        "versions": versions(),
        "bundle": {"path": str(bundle), "input_size": input_size, "strategy": bundle_config.get("strategy"),
                   "backbone": (bundle_config.get("backbone") or {}).get("name"), **bundle_info},
        "inputs": {"folder": str(args.data), "n_photos": len(photos),
                   "mean_kib": round(sum(map(len, photos)) / len(photos) / 1024, 1)},
        "server": {"command": server_command, "backend": backend, "startup_s": round(startup, 1),
                   "workers": args.workers, "max_batch": args.max_batch, "batch_window_ms": args.batch_window_ms,
                   "log_tail": server_log},
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "client": args.client_impl,
                     "raw_seconds": args.raw_seconds, "check_seconds": args.check_seconds},
        "service": levels_out,
        "raw_onnxruntime": {**full, "onnx": str(onnx_path), "onnx_source": onnx_source},
        "raw_reference_checks": checks,
        "raw_reference_spread": round(spread, 3),
        "goals": {"judged_against": "the mean of the short raw checks taken just before and after the level",
                  "throughput_level": top["concurrency"], "throughput_ratio": round(throughput_ratio, 3),
                  "throughput_goal": 0.8, "throughput_reached": throughput_ratio >= 0.8,
                  "latency_level": one["concurrency"], "latency_ratio": round(latency_ratio, 3),
                  "latency_goal": 2.0, "latency_reached": latency_ratio <= 2.0,
                  "against_raw_after_server_stopped": {"throughput_ratio": round(throughput_ratio_full, 3),
                                                       "latency_ratio": round(latency_ratio_full, 3)}},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    if args.keep_workdir:
        print(f"kept {workdir} (server log, export cache, trained bundle)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
