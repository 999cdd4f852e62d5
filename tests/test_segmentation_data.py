"""Segmentation data layer (layouts, pairing, skips, mask formats, joint augmentation) and segmentation metrics."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.data.segmentation import (
    JointParams,
    JointTransform,
    MaskError,
    MaskFormat,
    SegmentationDataset,
    load_segmentation_dataset,
    looks_like_segmentation_data,
    read_mask,
    read_segmentation_pairs,
)
from headstart.errors import DataError, ParameterError
from headstart.evaluation.segmentation import (
    colorize_mask,
    confusion_for_image,
    format_segmentation_summary,
    render_overlay,
    save_mask_png,
    segmentation_metrics,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _image(seed: int, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def _index_mask(seed: int, size: tuple[int, int] = (8, 8), classes: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=(size[1], size[0]), dtype=np.uint8)


def _pair_folder(root: Path, names: list[str], *, images: str = "images", masks: str = "masks",
                 classes: int = 3) -> Path:
    for seed, name in enumerate(names):
        _save(root / images / f"{name}.png", _image(seed))
        _save(root / masks / f"{name}.png", _index_mask(seed, classes=classes))
    return root


def _reasons(splits: object) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in splits.skipped}  # type: ignore[attr-defined]


# --- real data ---------------------------------------------------------------------------------------------------


def test_isbi_membrane_loads_as_binary_with_unlabelled_test(shared_data: Path) -> None:
    root = shared_data / "segmentation" / "isbi_membrane"
    assert looks_like_segmentation_data(root)
    splits = load_segmentation_dataset(root, val_fraction=0.2, seed=0)
    assert splits.mask_format == MaskFormat("binary")
    assert splits.classes == ["background", "foreground"]
    assert (len(splits.train), len(splits.val)) == (24, 6)
    assert splits.skipped == []
    pairs = set(zip(splits.train.images + splits.val.images, splits.train.masks + splits.val.masks))
    assert len(pairs) == 30 and all(image.name == mask.name for image, mask in pairs)
    assert all(mask.parent.name == "label" for _, mask in pairs)
    assert splits.test is not None and len(splits.test) == 30 and splits.test.masks == [None] * 30
    again = load_segmentation_dataset(root, val_fraction=0.2, seed=0)
    assert again.val.images == splits.val.images  # the hold-out is seeded
    summary = splits.summary()
    assert (summary["train"], summary["val"], summary["test"], summary["skipped_count"]) == (24, 6, 30, 0)
    mask = read_mask(splits.val.masks[0], splits.mask_format, num_classes=2)  # type: ignore[arg-type]
    assert mask.shape == (512, 512) and mask.dtype == np.int64 and set(np.unique(mask).tolist()) == {0, 1}


# --- layouts -----------------------------------------------------------------------------------------------------


def test_index_masks_with_ignore_and_classes_txt(tmp_path: Path) -> None:
    root = _pair_folder(tmp_path / "data", ["a", "b", "c", "d", "e"])
    mask = _index_mask(9)
    mask[0, :] = 255
    _save(root / "masks" / "a.png", mask)
    splits = load_segmentation_dataset(root, val_fraction=0.4, seed=1)
    assert splits.mask_format.kind == "index" and splits.mask_format.ignore_index == 255
    assert splits.classes == ["0", "1", "2"]
    assert (len(splits.train), len(splits.val), splits.test) == (3, 2, None)
    read = read_mask(root / "masks" / "a.png", splits.mask_format, num_classes=3)
    assert np.array_equal(read, mask.astype(np.int64)) and (read[0] == 255).all()

    (root / "classes.txt").write_text("road\n\nsky\ncar\n")
    assert load_segmentation_dataset(root).classes == ["road", "sky", "car"]


def test_binary_masks_0_1_and_split_folders(tmp_path: Path) -> None:
    for split, names in (("train", ["a", "b", "c"]), ("val", ["d"])):
        for seed, name in enumerate(names):
            _save(tmp_path / split / "img" / f"{name}.png", _image(seed))
            _save(tmp_path / split / "Labels" / f"{name}.png", _index_mask(seed, classes=2))
    _save(tmp_path / "test" / "Images" / "t.png", _image(5))
    assert looks_like_segmentation_data(tmp_path)
    splits = load_segmentation_dataset(tmp_path)
    assert splits.mask_format.kind == "binary" and splits.classes == ["background", "foreground"]
    assert (len(splits.train), len(splits.val)) == (3, 1) and splits.split.startswith("given")
    assert splits.test is not None and splits.test.masks == [None]
    mask = read_mask(tmp_path / "val" / "Labels" / "d.png", splits.mask_format, num_classes=2)
    assert np.array_equal(mask, _index_mask(0, classes=2))


def test_black_and_white_rgb_masks_are_binary(tmp_path: Path) -> None:
    for seed, name in enumerate(["a", "b", "c"]):
        _save(tmp_path / "images" / f"{name}.png", _image(seed))
        gray = _index_mask(seed, classes=2) * 255
        _save(tmp_path / "masks" / f"{name}.png", np.repeat(gray[..., None], 3, axis=2))
    splits = load_segmentation_dataset(tmp_path, val_fraction=0.3)
    assert splits.mask_format.kind == "binary" and splits.classes == ["background", "foreground"]
    assert np.array_equal(read_mask(tmp_path / "masks" / "a.png", splits.mask_format, num_classes=2),
                          _index_mask(0, classes=2))


def test_mask_suffix_pairing(tmp_path: Path) -> None:
    for seed, (image, mask) in enumerate([("a.jpg", "a_mask.png"), ("b.png", "b_gt.png"), ("c.png", "c_label.png")]):
        _save(tmp_path / "images" / image, _image(seed))
        _save(tmp_path / "masks" / mask, _index_mask(seed, classes=2) * 255)
    splits = load_segmentation_dataset(tmp_path, val_fraction=0.3)
    pairs = dict(zip(splits.train.images + splits.val.images, splits.train.masks + splits.val.masks))
    assert {image.name: mask.name for image, mask in pairs.items()} == {  # type: ignore[union-attr]
        "a.jpg": "a_mask.png", "b.png": "b_gt.png", "c.png": "c_label.png"}
    assert splits.skipped == [] and splits.mask_format.kind == "binary"


def test_table_of_pairs(tmp_path: Path) -> None:
    _pair_folder(tmp_path / "files", ["a", "b", "c"], classes=2)
    table = tmp_path / "pairs.csv"
    table.write_text("Image_Path,Mask\nfiles/images/a.png,files/masks/a.png\n"
                     f"{tmp_path / 'files/images/b.png'},files/masks/b.png\nfiles/images/c.png,files/masks/c.png\n"
                     "files/images/missing.png,files/masks/a.png\n\n")
    assert looks_like_segmentation_data(table)
    splits = load_segmentation_dataset(table, val_fraction=0.3, seed=0)
    assert len(splits.train) + len(splits.val) == 3
    assert _reasons(splits)["missing.png"] == "image file not found (row 5 of pairs.csv); expected an existing file"

    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("img\tlabel\nfiles/images/a.png\tfiles/masks/a.png\nfiles/images/b.png\tfiles/masks/b.png\n")
    assert len(load_segmentation_dataset(tsv, val=table).train) == 2

    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,1\n")
    assert not looks_like_segmentation_data(bad)
    with pytest.raises(DataError, match=r"needs an image column and a mask column. Found columns \['file', 'class'\]"):
        load_segmentation_dataset(bad)


def test_palette_masks_auto_and_explicit(tmp_path: Path) -> None:
    colours = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    for seed, name in enumerate(["a", "b", "c"]):
        _save(tmp_path / "images" / f"{name}.png", _image(seed))
        _save(tmp_path / "masks" / f"{name}.png", np.asarray(colours, dtype=np.uint8)[_index_mask(seed)])
    splits = load_segmentation_dataset(tmp_path, val_fraction=0.3)
    # the automatic palette is the distinct colours in sorted (r, g, b) order
    assert splits.mask_format.kind == "palette" and splits.mask_format.palette == ((0, 0, 0), (0, 0, 255), (255, 0, 0))
    assert splits.classes == ["0", "1", "2"]
    given = MaskFormat("palette", palette=tuple(colours))
    assert np.array_equal(read_mask(tmp_path / "masks" / "b.png", given, num_classes=3), _index_mask(1))

    odd = np.asarray(colours, dtype=np.uint8)[_index_mask(7)]
    odd[0, 0] = (1, 2, 3)
    _save(tmp_path / "masks" / "c.png", odd)
    splits = load_segmentation_dataset(tmp_path, mask_format=given, classes=["bg", "red", "blue"])
    assert _reasons(splits)["c.png"].startswith(
        "mask colours [(1, 2, 3)] are not in the palette; expected one of the 3 class colours")
    with pytest.raises(MaskError, match=r"mask colours \[\(1, 2, 3\)\] are not in the palette"):
        read_mask(tmp_path / "masks" / "c.png", given, num_classes=3)


def test_mask_format_round_trip_and_validation() -> None:
    fmt = MaskFormat("palette", palette=((1, 2, 3), (4, 5, 6)), ignore_index=-1)
    assert MaskFormat.from_dict(fmt.to_dict()) == fmt
    assert MaskFormat.from_dict(MaskFormat("index").to_dict()) == MaskFormat("index")
    with pytest.raises(ParameterError, match="must be one of"):
        MaskFormat("rgb")
    with pytest.raises(ParameterError, match="needs the RGB colour of every class"):
        MaskFormat("palette")
    with pytest.raises(ParameterError, match=r"three integers 0..255"):
        MaskFormat("palette", palette=((1, 2),))  # type: ignore[arg-type]


# --- malformed data: skips and errors ----------------------------------------------------------------------------


def test_each_bad_pair_is_skipped_with_its_reason(tmp_path: Path) -> None:
    root = _pair_folder(tmp_path, ["ok1", "ok2", "ok3"])
    _save(root / "images" / "lonely.png", _image(10))                        # no mask
    _save(root / "masks" / "orphan.png", _index_mask(11))                    # no image
    _save(root / "images" / "small.png", _image(12))                         # size mismatch
    _save(root / "masks" / "small.png", _index_mask(12, size=(4, 6)))
    _save(root / "images" / "odd.png", _image(13))                           # a value that is no class
    odd = _index_mask(13)
    odd[1, 1], odd[2, 2] = 9, 7
    _save(root / "masks" / "odd.png", odd)
    _save(root / "images" / "broken.png", _image(14))                        # unreadable mask
    (root / "masks" / "broken.png").write_bytes(b"not a png at all")
    (root / "images" / "garbage.png").write_bytes(b"")                      # unreadable image
    _save(root / "masks" / "garbage.png", _index_mask(15))
    splits = load_segmentation_dataset(root, classes=["a", "b", "c"], val_fraction=0.3)
    assert len(splits.train) + len(splits.val) == 3
    reasons = _reasons(splits)
    assert reasons["lonely.png"] == "no mask found; expected masks/lonely.png (or lonely_mask.png)"
    assert reasons["orphan.png"] == "no image found for this mask; expected images/orphan.<image extension>"
    assert reasons["small.png"] == ("image 8x8 but mask 4x6 (small.png); expected a mask the size of its image")
    assert reasons["odd.png"] == ("mask values [7, 9] are not class indices; expected 0..2 (3 classes) or 255 "
                                  "(ignored); its image odd.png is left out too")
    assert reasons["broken.png"].startswith("the mask cannot be read: not an image format headstart reads")
    assert reasons["broken.png"].endswith("its image broken.png is left out too")
    assert reasons["garbage.png"] == ("the image cannot be read: the file is empty (0 bytes); its mask garbage.png "
                                      "is left out too")
    assert splits.summary()["skipped_count"] == len(splits.skipped) == 6


def test_binary_format_skips_non_binary_values(tmp_path: Path) -> None:
    root = _pair_folder(tmp_path, ["a", "b"], classes=2)
    _save(root / "images" / "c.png", _image(3))
    _save(root / "masks" / "c.png", np.full((8, 8), 128, dtype=np.uint8))
    splits = load_segmentation_dataset(root, mask_format="binary", val_fraction=0.5)
    assert _reasons(splits)["c.png"].startswith("mask values [128] are not binary; expected only 0 and 255 (or 0 and 1)")
    with pytest.raises(MaskError, match=r"mask values \[128\] are not binary"):
        read_mask(root / "masks" / "c.png", MaskFormat("binary"), num_classes=2)


def test_unrecognised_layout_names_the_layouts(tmp_path: Path) -> None:
    _pair_folder(tmp_path, ["a"], images="photos", masks="segs")
    assert not looks_like_segmentation_data(tmp_path)
    with pytest.raises(DataError) as caught:
        load_segmentation_dataset(tmp_path)
    message = str(caught.value)
    assert "not a segmentation dataset layout" in message and "Found folders ['photos', 'segs']" in message
    assert "ROOT/<images>/ + ROOT/<masks>/" in message and "ROOT/train/<images>/" in message and ".csv" in message
    only_images = tmp_path / "only"
    _save(only_images / "images" / "a.png", _image(0))
    with pytest.raises(DataError, match="not a segmentation dataset layout"):
        load_segmentation_dataset(only_images)
    with pytest.raises(DataError, match="does not exist"):
        load_segmentation_dataset(tmp_path / "missing")


def test_nothing_usable_names_the_path_and_most_common_reason(tmp_path: Path) -> None:
    for name in ["a", "b", "c"]:
        _save(tmp_path / "images" / f"{name}.png", _image(0))
        (tmp_path / "masks").mkdir(exist_ok=True)
        (tmp_path / "masks" / f"{name}.png").write_bytes(b"\x89PNG broken")
    _save(tmp_path / "images" / "d.png", _image(1))
    with pytest.raises(DataError) as caught:
        load_segmentation_dataset(tmp_path)
    message = str(caught.value)
    assert f"No usable image/mask pair in the training data {tmp_path}" in message
    assert "4 files were skipped, most often because of unreadable mask (3)" in message


def test_read_segmentation_pairs_for_evaluation(tmp_path: Path) -> None:
    _pair_folder(tmp_path / "train", ["a", "b"])
    _pair_folder(tmp_path / "test", ["c", "d"])
    _save(tmp_path / "test" / "images" / "e.png", _image(5))
    samples, skipped = read_segmentation_pairs(tmp_path, mask_format=MaskFormat("index"), classes=["x", "y", "z"])
    assert [p.name for p in samples.images] == ["c.png", "d.png"] and samples.labelled_count == 2
    assert [(Path(s.path).name, s.reason) for s in skipped] == [
        ("e.png", "no mask found; expected masks/e.png (or e_mask.png)")]
    with pytest.raises(DataError, match="most often because of mask values"):
        read_segmentation_pairs(tmp_path / "test", mask_format=MaskFormat("index"), classes=["x", "y"])


def test_parameters_are_checked(tmp_path: Path) -> None:
    root = _pair_folder(tmp_path, ["a", "b"])
    with pytest.raises(ParameterError, match="val_fraction"):
        load_segmentation_dataset(root, val_fraction=1.0)
    with pytest.raises(ParameterError, match="must be one of"):
        load_segmentation_dataset(root, mask_format="rgb")
    with pytest.raises(ParameterError, match="also a class index"):
        load_segmentation_dataset(root, ignore_index=1)


# --- joint augmentation ------------------------------------------------------------------------------------------


def _blocks(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A mask of random rectangular blocks of classes 0..2."""
    block = int(rng.integers(1, 5))
    grid = rng.integers(0, 3, size=(height // block + 1, width // block + 1))
    return np.kron(grid, np.ones((block, block), dtype=np.int64))[:height, :width]


def _labels_from_image(tensor: torch.Tensor) -> np.ndarray:
    """Undo the normalisation of an image whose pixels are mask * 100 on every channel."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    pixels = ((tensor * std + mean) * 255.0).round().to(torch.int64).numpy()
    assert (pixels[0] == pixels[1]).all() and (pixels[1] == pixels[2]).all()
    return pixels[0]


def test_joint_augmentation_keeps_masks_aligned() -> None:
    rng = np.random.default_rng(1234)
    seen = {"padded": 0, "cropped": 0, "hflip": 0, "vflip": 0, "rotate90": 0}
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(3, 40, size=2))
        mask = _blocks(rng, height, width)
        image = Image.fromarray(np.repeat((mask * 100).astype(np.uint8)[..., None], 3, axis=2))
        transform = JointTransform(train=True, crop_size=int(rng.integers(2, 48)), scale=(0.5, 2.0), hflip=True,
                                   vflip=True, rotate90=True, mean=MEAN, std=STD, interpolation="nearest")
        draw_seed = int(rng.integers(1 << 30))
        params = transform.sample_params(width, height, np.random.default_rng(draw_seed))
        tensor, labels = transform(image, mask, np.random.default_rng(draw_seed))
        assert labels is not None and labels.dtype == torch.int64 and tensor.dtype == torch.float32
        crop = transform.crop_size
        assert tuple(tensor.shape) == (3, crop, crop) and tuple(labels.shape) == (crop, crop)
        decoded, truth = _labels_from_image(tensor), labels.numpy()
        labelled = truth != 255
        assert np.array_equal(decoded[labelled], truth[labelled] * 100)  # every labelled pixel is aligned
        assert (decoded[~labelled] == 0).all()  # padding: black image, ignored mask
        assert labelled.any()
        seen["padded"] += bool((~labelled).any())
        seen["cropped"] += params.resized[0] > crop or params.resized[1] > crop
        seen["hflip"] += params.hflip
        seen["vflip"] += params.vflip
        seen["rotate90"] += params.rotate90
    assert min(seen.values()) >= 20, seen  # every geometric operation was exercised


def test_joint_params_are_a_pure_geometry() -> None:
    mask = np.arange(12).reshape(3, 4)
    image = Image.fromarray(np.repeat((mask * 20).astype(np.uint8)[..., None], 3, axis=2))
    transform = JointTransform(train=True, crop_size=4, mean=MEAN, std=STD, ignore_index=99)
    pixels, labels = transform.apply_params(image, mask, JointParams((4, 3), None, hflip=True, vflip=False,
                                                                     rotate90=1))
    assert np.array_equal(labels, np.rot90(mask[:, ::-1]))
    assert np.array_equal(pixels[..., 0], np.rot90(mask[:, ::-1]) * 20)
    _, padded = transform.apply_params(image, mask, JointParams((4, 3), (-1, 1), False, False, 0))
    assert padded.tolist() == [[99, 4, 5, 6], [99, 8, 9, 10], [99, 99, 99, 99], [99, 99, 99, 99]]

    evaluation = JointTransform(train=False, crop_size=2, mean=MEAN, std=STD)
    tensor, same = evaluation(image, mask, np.random.default_rng(0))
    assert tuple(tensor.shape) == (3, 3, 4) and same is not None and np.array_equal(same.numpy(), mask)
    tensor, nothing = evaluation(image.convert("L"), None, np.random.default_rng(0))
    assert nothing is None and tuple(tensor.shape) == (3, 3, 4)
    with pytest.raises(ParameterError, match="crop_size"):
        JointTransform(train=True, crop_size=0, mean=MEAN, std=STD)


def test_dataset_augmentation_depends_on_seed_epoch_and_index(tmp_path: Path) -> None:
    root = _pair_folder(tmp_path, ["a", "b", "c"])
    splits = load_segmentation_dataset(root, val_fraction=0.3)
    transform = JointTransform(train=True, crop_size=6, scale=(0.5, 1.5), mean=MEAN, std=STD)
    dataset = SegmentationDataset(splits.train, splits.mask_format, 3, transform, seed=3)
    first = [dataset[0] for _ in range(2)]
    assert torch.equal(first[0][0], first[1][0]) and torch.equal(first[0][1], first[1][1])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][1], first[0][1])
    dataset.set_epoch(0)
    assert torch.equal(dataset[0][1], first[0][1])

    unlabelled = splits.train.subset([0])
    unlabelled.masks = [None]
    image, labels = SegmentationDataset(unlabelled, splits.mask_format, 3,
                                        JointTransform(train=False, mean=MEAN, std=STD))[0]
    assert tuple(image.shape) == (3, 8, 8) and (labels == 255).all() and labels.dtype == torch.int64


# --- metrics -----------------------------------------------------------------------------------------------------

TRUE_3X3 = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 255]])
PRED_3X3 = np.array([[0, 1, 1], [0, 1, 0], [2, 0, 1]])
TRUE_4X4 = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
PRED_4X4 = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1], [1, 1, 0, 0]])


def _close(value: float | None, fraction: Fraction) -> bool:
    return value is not None and abs(value - float(fraction)) < 1e-12


def test_metrics_match_hand_computed_values() -> None:
    one = confusion_for_image(PRED_3X3, TRUE_3X3, num_classes=4, ignore_index=255)
    # rows = truth, columns = prediction; the ignored corner pixel is not counted (8 of 9 pixels)
    assert one.tolist() == [[2, 1, 0, 0], [1, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    metrics = segmentation_metrics([one], ["a", "b", "c", "d"], n_bootstrap=0)
    # class a: TP 2, FP 2, FN 1 -> IoU 2/5, Dice 4/7; b: TP 2, FP 1, FN 1 -> 2/4, 4/6; c: TP 1, FP 0, FN 1 -> 1/2, 2/3
    ious, dices = [Fraction(2, 5), Fraction(1, 2), Fraction(1, 2)], [Fraction(4, 7), Fraction(2, 3), Fraction(2, 3)]
    for row, iou, dice in zip(metrics["per_class"], ious, dices):
        assert _close(row["iou"], iou) and _close(row["dice"], dice)
    d = metrics["per_class"][3]
    assert (d["iou"], d["dice"], d["true_pixels"], d["predicted_pixels"]) == (None, None, 0, 0)
    assert _close(metrics["miou"], Fraction(7, 15))  # (2/5 + 1/2 + 1/2) / 3: class d, in neither, is left out
    assert _close(metrics["dice"], Fraction(40, 63))  # (4/7 + 2/3 + 2/3) / 3
    assert _close(metrics["pixel_accuracy"], Fraction(5, 8))
    assert (metrics["n_images"], metrics["n_pixels"], metrics["miou_ci"]) == (1, 8, None)

    two = confusion_for_image(PRED_4X4, TRUE_4X4, num_classes=4, ignore_index=255)
    assert two.tolist() == [[7, 1, 0, 0], [2, 6, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    pooled = segmentation_metrics([one, two], ["a", "b", "c", "d"], n_bootstrap=200)
    # summed: [[9,2,0,0],[3,8,0,0],[1,0,1,0],[0]*4] -> a: TP 9, FP 4, FN 2; b: TP 8, FP 2, FN 3; c: TP 1, FP 0, FN 1
    expected = [(Fraction(9, 15), Fraction(18, 24)), (Fraction(8, 13), Fraction(16, 21)), (Fraction(1, 2), Fraction(2, 3))]
    for row, (iou, dice) in zip(pooled["per_class"], expected):
        assert _close(row["iou"], iou) and _close(row["dice"], dice)
    assert _close(pooled["miou"], (Fraction(9, 15) + Fraction(8, 13) + Fraction(1, 2)) / 3)
    assert _close(pooled["pixel_accuracy"], Fraction(18, 24))
    assert pooled["confusion_matrix"] == [[9, 2, 0, 0], [3, 8, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert [row["true_pixels"] for row in pooled["per_class"]] == [11, 11, 2, 0]
    assert [row["predicted_pixels"] for row in pooled["per_class"]] == [13, 10, 1, 0]
    assert set(pooled) == {"miou", "miou_ci", "dice", "dice_ci", "pixel_accuracy", "pixel_accuracy_ci", "per_class",
                           "confusion_matrix", "n_images", "n_pixels"}
    text = format_segmentation_summary(pooled)
    assert text.startswith("mIoU 0.572") and "2 images, 24 pixels scored" in text
    assert "absent" in text.splitlines()[-1] and text.splitlines()[-1].startswith("d ")

    with pytest.raises(ParameterError, match="same shape"):
        confusion_for_image(PRED_3X3, TRUE_4X4, num_classes=4)
    with pytest.raises(ParameterError, match=r"must be 2x2 for the 2 classes. Got shape \(4, 4\)"):
        segmentation_metrics([one], ["a", "b"])


def test_bootstrap_intervals_bracket_the_estimates() -> None:
    rng = np.random.default_rng(0)
    confusions = []
    for _ in range(25):
        truth = rng.integers(0, 3, size=(12, 12))
        pred = np.where(rng.random((12, 12)) < 0.7, truth, rng.integers(0, 3, size=(12, 12)))
        confusions.append(confusion_for_image(pred, truth, num_classes=3, ignore_index=255))
    metrics = segmentation_metrics(confusions, ["x", "y", "z"], n_bootstrap=500, seed=1)
    for key in ("miou", "dice", "pixel_accuracy"):
        low, high = metrics[f"{key}_ci"]
        assert low <= metrics[key] <= high and high - low < 0.2
    for row in metrics["per_class"]:
        assert row["iou_ci"][0] <= row["iou"] <= row["iou_ci"][1]
        assert row["dice_ci"][0] <= row["dice"] <= row["dice_ci"][1]
    assert segmentation_metrics(confusions, ["x", "y", "z"], n_bootstrap=500, seed=1) == metrics


# --- pictures and saved masks ------------------------------------------------------------------------------------


def test_save_mask_png_round_trip(tmp_path: Path) -> None:
    mask = np.random.default_rng(0).integers(0, 3, size=(9, 7))
    mask[0, 0] = 255
    path = save_mask_png(mask, tmp_path / "out" / "mask.png", classes=["a", "b", "c"])
    with Image.open(path) as saved:
        assert saved.mode == "P" and saved.info["classes"] == '["a", "b", "c"]'
        assert np.array_equal(np.asarray(saved), mask)
    assert np.array_equal(read_mask(path, MaskFormat("index"), num_classes=3), mask)
    assert sorted(p.name for p in path.parent.iterdir()) == ["mask.png"]  # no temporary file left behind
    with pytest.raises(ParameterError, match=r"values \[7\]"):
        save_mask_png(np.full((2, 2), 7), tmp_path / "bad.png", classes=["a", "b"])


def test_render_overlay_and_colorize() -> None:
    image = Image.fromarray(_image(0, size=(20, 10)))
    truth, prediction = _index_mask(1, size=(20, 10)), _index_mask(2, size=(20, 10))
    assert render_overlay(image, truth, prediction, num_classes=3).size == (60, 10)
    assert render_overlay(image.convert("L"), None, prediction, num_classes=3).size == (40, 10)
    colours = np.asarray(colorize_mask(np.array([[0, 1, 255]]), 2))
    assert colours[0, 2].tolist() == [0, 0, 0] and colours[0, 0].tolist() != colours[0, 1].tolist()
    with pytest.raises(ParameterError, match="image's size"):
        render_overlay(image, truth[:5], prediction, num_classes=3)
