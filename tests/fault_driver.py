"""A fork server for the crash-safety tests (test_faults.py): it imports headstart once, then runs each write the
test asks for in a forked child, which a fault point (or a timer) kills with SIGKILL, as ``kill -9`` would.

The test writes one JSON command per line to stdin; the server answers one JSON line per command on stdout:

    {"op": "save", "args": [BUNDLE, TARGET], "at": 3}        load BUNDLE and save it to TARGET, killed at point 3
    {"op": "export", "args": [BUNDLE, OUT], "trace": FILE}   export BUNDLE to OUT, listing the points passed
    {"op": "probe", "args": [DATA, CACHE, RESULT]}           fit a tiny linear probe with the feature store CACHE
    {"op": "train", "args": [CLI ARGS...], "kill_after": 2.5}   `headstart train ARGS`, killed after 2.5 s
    -> {"status": "ok" | "killed" | "failed", "code": N}

``at`` counts the fault points of the write alone (headstart.storage.fault_point): the child resets the count
after it forks, and the loading before the write (``save``, ``export``) happens before the count is armed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback


def _child(command: dict) -> None:
    from headstart import storage

    os.dup2(2, 1)  # the child's prints must not reach the protocol channel
    storage._FAULT_COUNT = 0
    for name in ("HEADSTART_FAULT_AT", "HEADSTART_FAULT_TRACE"):
        os.environ.pop(name, None)

    def arm() -> None:
        if command.get("at"):
            os.environ["HEADSTART_FAULT_AT"] = str(command["at"])
        if command.get("trace"):
            os.environ["HEADSTART_FAULT_TRACE"] = command["trace"]

    operation, args = command["op"], command["args"]
    if operation == "save":
        from headstart import ImageClassifier

        classifier = ImageClassifier.load(args[0])
        arm()
        classifier.save(args[1])
    elif operation == "export":
        from headstart.deploy.export import export_bundle
        from headstart.deploy.predictor import load_predictor

        predictor = load_predictor(args[0])
        arm()
        export_bundle(predictor, args[1])
    elif operation == "probe":
        from pathlib import Path

        from headstart import ImageClassifier

        arm()
        classifier = ImageClassifier(backbone="timm:test_efficientnet", weights="random", image_size=64, batch_size=8,
                                     strategy="linear_probe", progress=False, num_workers=0, runtime="torch",
                                     cache_dir=args[1], calibrate=False)
        classifier.fit(args[0])
        images = sorted(str(p) for p in Path(args[0]).rglob("*.jpg"))
        Path(args[2]).write_text(json.dumps(classifier.predict_proba(images).tolist()))
    elif operation == "train":
        from headstart.cli import app

        arm()
        code = app(["train", *args], standalone_mode=False)  # click returns the exit code instead of exiting
        if isinstance(code, int) and code:
            raise SystemExit(code)
    else:
        raise ValueError(f"unknown operation {operation!r}")


def _run(command: dict) -> dict:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _child(command)
        except SystemExit as error:
            code = error.code if isinstance(error.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported to the test, which fails on it
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + command["kill_after"] if command.get("kill_after") else None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if deadline is not None and time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = None
        time.sleep(0.02)
    if os.WIFSIGNALED(status):
        return {"status": "killed" if os.WTERMSIG(status) == signal.SIGKILL else "failed",
                "code": -os.WTERMSIG(status)}
    code = os.WEXITSTATUS(status)
    return {"status": "ok" if code == 0 else "failed", "code": code}


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(1)  # no OpenMP pool in the server: forking it stays safe
    import headstart.cli  # noqa: F401 - everything a command needs, imported once
    from headstart import ImageClassifier  # noqa: F401
    from headstart.deploy import export  # noqa: F401

    print(json.dumps({"status": "ready"}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
