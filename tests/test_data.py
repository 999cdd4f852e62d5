"""Image folders: layouts, splits, RGB conversion, and every kind of bad input, built from real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data import (
    ImageDecodeError,
    load_image,
    load_image_dataset,
    scan_image_folder,
    stratified_split,
)
from headstart.errors import DataError, ParameterError


def _a_photo(folder: Path) -> Path:
    return sorted(folder.rglob("*.jpg"))[0]


def test_rgb_conversion_of_every_mode(tmp_path: Path, image_folder: Path) -> None:
    photo = Image.open(_a_photo(image_folder)).convert("RGB")
    cases = {
        "gray.png": photo.convert("L"),
        "palette.png": photo.convert("P"),
        "cmyk.jpg": photo.convert("CMYK"),
        "rgba.png": photo.convert("RGBA"),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
    # a real 2-frame animated GIF (palette mode); the first frame is the one to load
    frames = [photo.convert("P"), photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / "animated.gif") as gif:
        assert gif.n_frames == 2 and gif.is_animated
    # 16-bit grayscale PNG with the full 16-bit range
    deep = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep16.png")
    for file in sorted(tmp_path.glob("*.*")):
        image = load_image(file)
        assert image.mode == "RGB", file.name
        assert image.size == photo.size, file.name
    # 16-bit values are scaled to 8 bits, not clipped to white
    deep_rgb = np.asarray(load_image(tmp_path / "deep16.png"))
    reference = np.asarray(photo.convert("L"))
    assert np.abs(deep_rgb[..., 0].astype(int) - reference.astype(int)).max() <= 1
    # transparent pixels are composited on white
    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    transparent.save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png"))[0, 0].tolist() == [255, 255, 255]


def test_bad_files_are_skipped_counted_and_listed(image_folder: Path) -> None:
    ants, bees = image_folder / "ants", image_folder / "bees"
    photo = _a_photo(ants)
    raw = photo.read_bytes()
    (ants / "corrupt.jpg").write_bytes(raw[:200] + bytes(range(256)) * 20)
    (ants / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (ants / "empty.jpg").write_bytes(b"")
    (ants / "notes.jpg").write_text("this is not an image, just text named .jpg")
    (ants / "readme.txt").write_text("a stray text file")
    Image.new("L", (30000, 30000)).save(bees / "bomb.png")  # 900 Mpx, a few hundred KB on disk
    # odd but valid formats, made from a real photo: used, not skipped
    picture = Image.open(photo).convert("RGB")
    picture.convert("P").save(bees / "palette.gif")
    picture.convert("CMYK").save(bees / "cmyk.jpg")
    picture.convert("RGBA").save(bees / "alpha.png")
    Image.fromarray((np.asarray(picture.convert("L"), dtype=np.uint16) * 257)).save(bees / "deep16.png")
    (bees / "a name with spaces ü é 日本.jpg").write_bytes(raw)
    checkpoints = image_folder / "bees" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    shutil.copy(photo, checkpoints / "copy-checkpoint.jpg")
    (image_folder / "__MACOSX").mkdir()
    (image_folder / ".hidden_class").mkdir()

    samples, skipped = scan_image_folder(image_folder)
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert samples.classes == ["ants", "bees"]  # __MACOSX and dot-folders are not classes
    assert set(reasons) == {"corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.jpg", "readme.txt", "bomb.png"}
    assert "empty" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "bomb" in reasons["bomb.png"]
    assert any(p.name.startswith("a name with spaces") for p in samples.paths)
    assert not any(".ipynb_checkpoints" in str(p) for p in samples.paths)
    assert {"palette.gif", "cmyk.jpg", "alpha.png", "deep16.png"} <= {p.name for p in samples.paths}
    assert samples.class_counts() == {"ants": 16, "bees": 21}


def test_empty_class_is_an_error_before_training(image_folder: Path) -> None:
    (image_folder / "wasps").mkdir()
    (image_folder / "wasps" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match=r"no usable image: \['wasps'\]"):
        scan_image_folder(image_folder)


def test_single_class_is_an_error(tmp_path: Path, image_folder: Path) -> None:
    shutil.rmtree(image_folder / "bees")
    with pytest.raises(DataError, match="at least two classes") as info:
        scan_image_folder(image_folder)
    assert info.value.fix


def test_loose_files_without_class_folders(tmp_path: Path, image_folder: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for file in list((image_folder / "ants").glob("*.jpg"))[:3]:
        shutil.copy(file, flat)
    with pytest.raises(DataError, match="loose files"):
        scan_image_folder(flat)


def test_labels_differing_between_train_and_val(tmp_path: Path, sample_dir: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(sample_dir, root)
    shutil.move(root / "val" / "bees", root / "val" / "wasps")
    with pytest.raises(DataError, match=r"missing \['bees'\].*not in training data \['wasps'\]"):
        load_image_dataset(root)


def test_presplit_layout_with_validation_folder(tmp_path: Path, sample_dir: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(sample_dir, root)
    (root / "val").rename(root / "validation")
    splits = load_image_dataset(root)
    assert len(splits.train) == 32 and len(splits.val) == 12 and splits.test is not None and len(splits.test) == 12
    assert splits.split.startswith("given")


def test_stratified_split_is_seeded_and_keeps_proportions(image_folder: Path) -> None:
    splits = load_image_dataset(image_folder, val_fraction=0.25, seed=3)
    again = load_image_dataset(image_folder, val_fraction=0.25, seed=3)
    other = load_image_dataset(image_folder, val_fraction=0.25, seed=4)
    assert splits.val.paths == again.val.paths
    assert splits.val.paths != other.val.paths
    assert splits.val.class_counts() == {"ants": 4, "bees": 4}
    assert not set(splits.val.paths) & set(splits.train.paths)
    assert "stratified" in splits.split
    with pytest.raises(ParameterError, match="val_fraction"):
        stratified_split(splits.train, val_fraction=1.5, seed=0)


def test_decode_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageDecodeError) as info:
        load_image(bad)
    assert str(bad) in str(info.value) and info.value.fix


def test_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_dataset(tmp_path / "nope")


def test_training_on_a_messy_folder_reports_skips(image_folder: Path, tmp_path: Path) -> None:
    """A run over a folder with bad files trains, and lists every skipped file in data.json and summary.txt."""
    import json

    from conftest import tiny_params

    from headstart import ImageClassifier

    raw = _a_photo(image_folder / "ants").read_bytes()
    (image_folder / "ants" / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    (image_folder / "bees" / "empty.png").write_bytes(b"")
    (image_folder / "bees" / "ünïcode name.jpg").write_bytes(raw)
    run = tmp_path / "run"
    ImageClassifier(**tiny_params(epochs=1)).fit(image_folder, out=run)
    data = json.loads((run / "data.json").read_text())
    assert data["skipped_count"] == 2
    assert {Path(s["path"]).name for s in data["skipped"]} == {"truncated.jpg", "empty.png"}
    assert "truncated.jpg" in (run / "summary.txt").read_text()
    assert data["train"]["bees"] + data["val"]["bees"] == 17


def test_large_jpegs_decode_at_a_reduced_scale_alike_everywhere(tmp_path: Path) -> None:
    """Evaluation decodes a JPEG much larger than the resize target in draft mode (1/2, 1/4, 1/8 inside the
    decoder), with features close to a full decode; files and uploaded bytes decode the same way."""
    from headstart.data.images import load_image, load_image_bytes
    from headstart.data.preprocessing import Preprocessing
    from headstart.data.transforms import ImageDataset, build_transform

    y, x = np.mgrid[0:1200, 0:1600]
    pixels = np.stack([(x / 1600 * 255), (y / 1200 * 255), ((x + y) % 256)], axis=-1).astype(np.uint8)
    path = tmp_path / "large.jpg"
    Image.fromarray(pixels).save(path, quality=92)
    preprocessing = Preprocessing(input_size=224, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875)
    transform = build_transform(preprocessing, train=False, as_uint8=True)
    dataset = ImageDataset([path], None, transform)
    assert dataset.draft_size == 256
    assert load_image(path, draft_size=dataset.draft_size).size == (400, 300)  # 1/4: both sides still >= 256
    assert load_image(path).size == (1600, 1200)
    assert ImageDataset([path], None, build_transform(preprocessing, train=True)).draft_size is None
    drafted, _ = dataset[0]
    full = transform(load_image(path))
    assert drafted.shape == full.shape == (3, 224, 224)
    difference = (drafted.float() - full.float()).abs()
    assert 0 < float(difference.mean()) < 2.0, "draft decoding should differ from a full decode only slightly"
    upload = transform(load_image_bytes(path.read_bytes(), draft_size=dataset.draft_size))
    assert np.array_equal(upload.numpy(), drafted.numpy())
