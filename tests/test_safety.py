"""No command destroys data: every write replaces only what headstart wrote itself (issue 19).

Each test puts a user's files where a careless write would land, runs the command, and checks that every one of
them is still there, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import tiny_params
from typer.testing import CliRunner

from headstart import ImageClassifier
from headstart.cli import app
from headstart.errors import OverwriteError
from headstart.storage import OWNER_FILE, atomic_directory, atomic_write_text, read_json


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> SHA-256)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def kept(before: dict[str, str], folder: Path) -> list[str]:
    """The files of ``before`` that are missing or changed now (empty: nothing lost)."""
    after = snapshot(folder)
    return [name for name, digest in before.items() if after.get(name) != digest]


@pytest.fixture
def workspace(tmp_path: Path, tiny_image_bundle: Path) -> Path:
    """work/ with a model, a note and a data folder: what `--out work` once wiped."""
    work = tmp_path / "work"
    shutil.copytree(tiny_image_bundle, work / "mymodel")
    (work / "notes.txt").write_text("my notes\n")
    (work / "data").mkdir()
    (work / "data" / "table.csv").write_text("a,b\n1,2\n")
    return work


@pytest.mark.parametrize("out", ["work", "work/mymodel", "."])
def test_export_into_its_source_or_a_user_folder_is_refused(workspace: Path, out: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace.parent if out != "." else workspace)
    source = "work/mymodel" if out != "." else "mymodel"
    before = snapshot(workspace)
    result = CliRunner().invoke(app, ["export", source, "--out", out])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "Fix:" in result.output and "Traceback" not in result.output, result.output
    assert kept(before, workspace) == [] and snapshot(workspace).keys() == before.keys()


def test_export_replaces_its_own_folder_but_not_a_users_file_in_it(workspace: Path, tmp_path: Path) -> None:
    from headstart.deploy.export import export_bundle

    out = tmp_path / "exported"
    export_bundle(workspace / "mymodel", out)
    marker = read_json(out / OWNER_FILE)
    assert marker["kind"] == "export" and "model.onnx" in marker["entries"]
    export_bundle(workspace / "mymodel", out)  # its own folder: replaced
    assert (out / "model.onnx").is_file()
    (out / "README.txt").write_text("how we deploy this\n")
    with pytest.raises(OverwriteError, match="README.txt") as info:
        export_bundle(workspace / "mymodel", out)
    assert info.value.fix and (out / "README.txt").read_text() == "how we deploy this\n"


def test_an_export_folder_from_before_the_marker_is_still_replaced(workspace: Path, tmp_path: Path) -> None:
    from headstart.deploy.export import export_bundle

    out = tmp_path / "old-export"
    export_bundle(workspace / "mymodel", out)
    (out / OWNER_FILE).unlink()  # as an older headstart wrote it
    export_bundle(workspace / "mymodel", out)
    assert (out / OWNER_FILE).is_file()


def test_save_refuses_a_users_folder_a_file_and_a_link(tmp_path: Path, sample_dir: Path) -> None:
    classifier = ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir / "train")
    user = tmp_path / "project"
    (user / "src").mkdir(parents=True)
    (user / "src" / "main.py").write_text("print('hi')\n")
    before = snapshot(user)
    with pytest.raises(OverwriteError, match="src") as info:
        classifier.save(user)
    assert "new or empty folder" in (info.value.fix or "") and kept(before, user) == []
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OverwriteError, match="is a file"):
        classifier.save(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    classifier.save(tmp_path / "empty")  # an empty folder is fine
    classifier.save(tmp_path / "empty")  # and so is its own
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(OverwriteError, match="symbolic link"):
        classifier.save(tmp_path / "link")
    assert ImageClassifier.load(tmp_path / "empty").classes_ == classifier.classes_


def test_a_bundle_from_before_the_marker_is_replaced_but_not_with_extra_files(tmp_path: Path,
                                                                             sample_dir: Path) -> None:
    classifier = ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir / "train")
    model = classifier.save(tmp_path / "model")
    (model / OWNER_FILE).unlink()
    classifier.save(model)  # a legacy bundle: replaced
    (model / OWNER_FILE).unlink()
    (model / "notes.txt").write_text("keep me\n")
    with pytest.raises(OverwriteError, match="notes.txt"):
        classifier.save(model)
    assert (model / "notes.txt").read_text() == "keep me\n"


def test_atomic_directory_rechecks_before_the_swap(tmp_path: Path) -> None:
    target = tmp_path / "target"
    with atomic_directory(target, kind="export") as folder:
        atomic_write_text(folder / "a.txt", "1")
    with pytest.raises(OverwriteError, match="late.txt"):
        with atomic_directory(target, kind="export") as folder:
            atomic_write_text(folder / "a.txt", "2")
            (target / "late.txt").write_text("written by someone else meanwhile")
    assert (target / "a.txt").read_text() == "1" and (target / "late.txt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_train_refuses_an_out_inside_its_data_and_a_foreign_folder(tmp_path: Path, sample_dir: Path) -> None:
    data = tmp_path / "photos"
    shutil.copytree(sample_dir / "train", data)
    before = snapshot(data)
    for out in (data, data / "run", data / "ants" / "run"):
        result = CliRunner().invoke(app, ["train", str(data), "--out", str(out), "--backbone", "timm:test_efficientnet",
                                          "--weights", "random", "--quiet"])
        assert result.exit_code != 0 and "outside the data" in result.output, result.output
    assert kept(before, data) == [] and snapshot(data).keys() == before.keys()
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"my": "settings"}')
    (foreign / "model").mkdir()
    (foreign / "model" / "weights.bin").write_bytes(b"\x00" * 10)
    before = snapshot(foreign)
    result = CliRunner().invoke(app, ["train", str(data), "--out", str(foreign), "--backbone",
                                      "timm:test_efficientnet", "--weights", "random", "--quiet", "--overwrite"])
    assert result.exit_code != 0 and "not a headstart run folder" in result.output, result.output
    assert kept(before, foreign) == []


def test_fit_keeps_a_users_files_in_the_run_folder_and_refuses_a_foreign_checkpoints_folder(
        tmp_path: Path, sample_dir: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep\n")
    ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir / "train", out=run)
    ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir / "train", out=run)  # its own run: replaced
    assert (run / "notes.txt").read_text() == "keep\n" and (run / "model" / OWNER_FILE).is_file()
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "epoch-0003.pt").write_bytes(b"someone else's")
    with pytest.raises(OverwriteError, match="not a headstart run folder"):
        ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir / "train", out=other)
    (run / "checkpoints" / "epoch-0003.pt").write_bytes(b"someone else's")  # a run folder, a foreign file inside
    with pytest.raises(OverwriteError, match="epoch-0003.pt"):
        ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir / "train", out=run)
    assert (run / "checkpoints" / "epoch-0003.pt").read_bytes() == b"someone else's"
    assert (other / "checkpoints" / "epoch-0003.pt").read_bytes() == b"someone else's"


def test_overwrite_removes_only_what_the_earlier_run_wrote(tmp_path: Path, sample_dir: Path) -> None:
    run = tmp_path / "run"
    args = ["train", str(sample_dir / "train"), "--out", str(run), "--backbone", "timm:test_efficientnet",
            "--weights", "random", "--image-size", "64", "--epochs", "1", "--strategy", "fine_tune", "--quiet",
            "--num-workers", "0", "--runtime", "torch"]
    assert CliRunner().invoke(app, args).exit_code == 0
    (run / "notes.txt").write_text("keep\n")
    (run / "model" / "README.md").write_text("a user's file inside the model folder\n")
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code != 0 and "README.md" in result.output, result.output
    assert (run / "model" / "README.md").is_file() and (run / "notes.txt").is_file()
    (run / "model" / "README.md").unlink()
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert (run / "notes.txt").read_text() == "keep\n" and (run / "model" / "config.json").is_file()
    assert os.listdir(run / "checkpoints")  # the new run's
