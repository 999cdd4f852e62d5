"""Crash safety: kill -9 at the fault points of save, export, train and the feature store's writes (issue 19).

``HEADSTART_FAULT_AT=N`` makes the child process SIGKILL itself at the Nth point it passes (``storage.fault_point``:
before and after every file rename, and between the steps of a folder swap). After each kill the earlier state is
intact (or the new one is complete), no user file is lost, and a rerun completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, tiny_params

from headstart import ImageClassifier
from headstart.storage import OWNER_FILE, read_json

DRIVER = Path(__file__).with_name("fault_driver.py")


class Server:
    """The fork server of fault_driver.py: one import of headstart, a forked child per command."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEADSTART_FAULT")}
        self.process = subprocess.Popen([sys.executable, str(DRIVER)], env={**env, "HF_HUB_OFFLINE": "1"},
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.process.stdout.readline())["status"] == "ready"

    def run(self, op: str, *args: object, at: int | None = None, trace: Path | None = None,
            kill_after: float | None = None) -> str:
        command = {"op": op, "args": [str(a) for a in args], "at": at, "kill_after": kill_after,
                   "trace": None if trace is None else str(trace)}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the fault server died"
        return json.loads(line)["status"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server() -> Server:
    started = Server()
    yield started
    started.close()
    if os.environ.get("HEADSTART_FAULT_REPORT"):
        Path(os.environ["HEADSTART_FAULT_REPORT"]).write_text(json.dumps(REPORT, indent=2) + "\n")


def points(trace: Path) -> list[str]:
    return [line.split()[2] for line in trace.read_text().splitlines()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def complete(folder: Path) -> bool:
    """Every entry the folder's owner file lists is there."""
    marker = read_json(folder / OWNER_FILE)
    return all((folder / entry).exists() for entry in marker["entries"])


EVERY_POINT = os.environ.get("HEADSTART_FAULT_EVERY_POINT") == "1"  # bench/fault_injection.py: all of them
REPORT: dict[str, dict[str, int]] = {}  # operation -> fault points passed, kills made (written for the bench)


def record(operation: str, names: list[str], kills: int) -> None:
    REPORT[operation] = {"points": len(names), "kills": kills}


def chosen(names: list[str], k: int, seed: int, *, swaps: bool = True) -> list[int]:
    """The points to kill at (1-based): every step of a folder swap, the last point, and seeded file writes up to
    ``k`` in all (each kill costs a fork, so not every one of a long command's points); with
    ``HEADSTART_FAULT_EVERY_POINT=1``, every point."""
    if EVERY_POINT:
        return list(range(1, len(names) + 1))
    always = {i + 1 for i, name in enumerate(names) if swaps and name.startswith("directory-")} | {len(names)}
    others = sorted(set(range(1, len(names) + 1)) - always)
    extra = random.Random(seed).sample(others, max(0, min(len(others), k - len(always))))
    return sorted(always | set(extra))


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model (a different seed): what the write under test puts in place of the first."""
    out = tmp_path_factory.mktemp("second-bundle")
    classifier = ImageClassifier(**tiny_params(strategy="linear_probe", epochs=1, calibrate=False, seed=1))
    classifier.fit(SAMPLE / "train", val=SAMPLE / "val")
    return classifier.save(out / "model")


def test_kill_at_every_point_of_save(server: Server, tiny_image_bundle: Path, second_bundle: Path,
                                   tmp_path: Path) -> None:
    old_weights, new_weights = digest(tiny_image_bundle / "model.safetensors"), digest(second_bundle / "model.safetensors")
    assert old_weights != new_weights
    work = tmp_path / "work"

    def fresh() -> Path:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        (work / "notes.txt").write_text("the user's\n")
        shutil.copytree(tiny_image_bundle, work / "model")
        return work / "model"

    fresh()
    assert server.run("save", second_bundle, work / "model", trace=tmp_path / "trace") == "ok"
    names = points(tmp_path / "trace")
    assert {"file-replaced", "directory-moved-aside", "directory-replaced"} <= set(names), names
    before = snapshot(fresh())
    record("save", names, len(names))
    for at in range(1, len(names) + 1):  # every point
        target = fresh()
        assert server.run("save", second_bundle, target, at=at) == "killed", at
        assert (work / "notes.txt").read_text() == "the user's\n"
        if target.exists():  # the earlier bundle untouched, or the new one complete
            if snapshot(target) != before:
                assert digest(target / "model.safetensors") == new_weights and complete(target), at
                ImageClassifier.load(target)
        else:  # killed between the two renames: the earlier bundle waits, whole, beside it
            (aside,) = work.glob(".model.*.old")
            assert snapshot(aside) == before, at
        ImageClassifier.load(second_bundle).save(target)  # the rerun completes
        assert digest(target / "model.safetensors") == new_weights and not list(work.glob(".model.*.old"))
        ImageClassifier.load(target)


def test_kill_during_export(server: Server, tiny_image_bundle: Path, second_bundle: Path, tmp_path: Path) -> None:
    from headstart.deploy.export import export_bundle

    template = tmp_path / "template"
    export_bundle(tiny_image_bundle, template)
    before = snapshot(template)
    out = tmp_path / "exported"
    shutil.copytree(template, out)
    assert server.run("export", second_bundle, out, trace=tmp_path / "trace") == "ok"
    names = points(tmp_path / "trace")
    record("export", names, len(chosen(names, 12, seed=0)))
    for at in chosen(names, 12, seed=0):
        shutil.rmtree(out)
        shutil.copytree(template, out)
        assert server.run("export", second_bundle, out, at=at) == "killed", at
        if out.exists():
            state = snapshot(out)
            if state != before:
                assert complete(out) and read_json(out / "headstart-export.json")["bundle"] == str(second_bundle)
        else:
            (aside,) = tmp_path.glob(".exported.*.old")
            assert snapshot(aside) == before, at
        export_bundle(second_bundle, out)  # the rerun completes
        assert read_json(out / "headstart-export.json")["bundle"] == str(second_bundle.resolve())


def test_kill_during_feature_store_writes_never_serves_bad_features(server: Server, tmp_path: Path) -> None:
    result = tmp_path / "probabilities.json"
    assert server.run("probe", SAMPLE / "train", tmp_path / "cache-clean", result, trace=tmp_path / "trace") == "ok"
    reference = np.array(json.loads(result.read_text()))
    names = points(tmp_path / "trace")
    assert names.count("file-replaced") >= 2, names  # key.json and at least one shard
    record("feature store", names, len(chosen(names, 8, seed=1)))
    for at in chosen(names, 8, seed=1):
        cache = tmp_path / f"cache-{at}"
        assert server.run("probe", SAMPLE / "train", cache, result, at=at) == "killed", at
        assert server.run("probe", SAMPLE / "train", cache, result) == "ok"  # the rerun, on what the kill left
        np.testing.assert_allclose(np.array(json.loads(result.read_text())), reference, atol=1e-5)


TRAIN = ["--backbone", "timm:test_efficientnet", "--weights", "random", "--image-size", "64", "--epochs", "2",
         "--strategy", "fine_tune", "--num-workers", "0", "--runtime", "torch", "--quiet", "--batch-size", "8"]


def test_kill_train_at_points_and_at_a_random_time(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "photos"
    shutil.copytree(SAMPLE / "train", data)
    data_before = snapshot(data)

    def args(run: Path) -> list[object]:  # each run with a feature store of its own: the same points every time
        return [data, "--out", run, *TRAIN, "--cache-dir", f"{run}-cache"]

    started = time.perf_counter()
    assert server.run("train", *args(tmp_path / "count"), trace=tmp_path / "trace") == "ok"
    seconds = time.perf_counter() - started
    names = points(tmp_path / "trace")
    kills: list[tuple[str, float]] = [("point", at) for at in chosen(names, 8, seed=2, swaps=False)]
    kills += [("time", random.Random(seed).uniform(0.2, 0.95) * seconds) for seed in range(3)]
    record("train", names, len(kills))
    for index, (how, when) in enumerate(kills):
        run = tmp_path / f"run-{index}"
        run.mkdir()
        (run / "notes.txt").write_text("the user's\n")
        if how == "point":
            assert server.run("train", *args(run), at=int(when)) == "killed", when
        else:
            server.run("train", *args(run), kill_after=when)
        # the rerun: resume when the run got as far as its config, else start it again; either must finish
        again = ["--resume", run, "--quiet"] if (run / "config.json").is_file() else args(run)
        assert server.run("train", *again) == "ok", (how, when)
        ImageClassifier.load(run / "model")
        assert (run / "notes.txt").read_text() == "the user's\n"
    assert snapshot(data) == data_before  # the data: not one file lost or changed
