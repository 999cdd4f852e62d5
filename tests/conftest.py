"""Shared fixtures. Tests never touch the network: the hub is forced offline before anything imports it."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "hymenoptera_sample"
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_BACKBONE = "timm:test_efficientnet"  # 0.4M parameters, random weights: fast unit tests


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 56-image ants/bees sample shipped in the repo (train/ val/ test/)."""
    return SAMPLE


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data is not beside this checkout ({SHARED_DATA}); integration tests need it")
    return SHARED_DATA


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A fresh copy of the sample's train/ split (2 classes x 16 real photos) that a test may damage."""
    target = tmp_path / "images"
    shutil.copytree(SAMPLE / "train", target)
    return target


def tiny_params(**overrides: object) -> dict[str, object]:
    """ImageClassifier arguments for a fast, random-weight model at 64 px."""
    params: dict[str, object] = dict(
        backbone=TINY_BACKBONE, weights="random", image_size=64, batch_size=8, epochs=2, strategy="fine_tune",
        progress=False, patience=None, num_workers=0,
    )
    params.update(overrides)
    return params
