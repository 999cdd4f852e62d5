"""Detection data (Pascal VOC, COCO), its transform and Dataset, and COCO mAP: real BCCD data, every kind of
bad annotation built in tmp_path, boxes checked against pixels, and metrics checked by hand and against
pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.data.detection import (
    CLIPPED,
    REASON_AREA,
    REASON_CATEGORY,
    REASON_CLASS,
    REASON_CROWD,
    REASON_IMAGE_ID,
    REASON_OUTSIDE,
    SIZE_DIFFERS,
    DetectionDataset,
    DetectionSample,
    DetectionSplits,
    DetectionTransform,
    collate_detection,
    load_detection_dataset,
    looks_like_detection_data,
    read_detection_annotations,
)
from headstart.errors import DataError, ParameterError
from headstart.evaluation.detection import (
    box_iou,
    detection_metrics,
    detections_to_json,
    draw_detections,
    format_detection_summary,
)

# ----------------------------------------------------------------------------------------------------------
# Builders of tiny datasets


def _jpeg(path: Path, size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (90, 120, 150)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=90)
    return path


def _voc_xml(path: Path, *, filename: str, size: tuple[int, int] | None = (64, 48),
             objects: list[tuple[str, tuple[float, float, float, float]]] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
    objects_xml = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, (x1, y1, x2, y2) in objects)
    path.write_text(f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>{size_xml}"
                    f"{objects_xml}</annotation>")


def _voc_image(root: Path, identifier: str, objects: list[tuple[str, tuple[float, float, float, float]]], *,
               size: tuple[int, int] = (64, 48), annotated: tuple[int, int] | None = None) -> None:
    _jpeg(root / "JPEGImages" / f"{identifier}.jpg", size)
    _voc_xml(root / "Annotations" / f"{identifier}.xml", filename=f"{identifier}.jpg",
             size=annotated or size, objects=objects)


def _write_lists(root: Path, **lists: list[str]) -> None:
    folder = root / "ImageSets" / "Main"
    folder.mkdir(parents=True, exist_ok=True)
    for name, ids in lists.items():
        (folder / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))


@pytest.fixture
def messy_voc(tmp_path: Path) -> Path:
    """A VOC folder with one image per problem (64x48 images, classes cell and nucleus, plus dust)."""
    root = tmp_path / "voc"
    for index in range(6):
        _voc_image(root, f"good{index}", [("cell", (5, 5, 20, 20)), ("nucleus", (30, 10, 40, 30))])
    _voc_image(root, "zero", [("cell", (10, 10, 10, 30)), ("cell", (1, 1, 9, 9))])
    _voc_image(root, "negative", [("cell", (30, 10, 20, 30))])
    _voc_image(root, "outside", [("cell", (70, 10, 90, 30)), ("nucleus", (5, -30, 20, -2))])
    _voc_image(root, "partly", [("cell", (50, -5, 80, 20))])
    _voc_image(root, "unknown", [("dust", (1, 1, 5, 5)), ("cell", (10, 10, 20, 20))])
    _voc_image(root, "empty", [])
    _voc_image(root, "resized", [("cell", (10, 10, 90, 60))], size=(100, 80), annotated=(64, 48))
    # the annotation names a file that does not exist; the image is there under the xml's own name
    _jpeg(root / "JPEGImages" / "renamed.jpg")
    _voc_xml(root / "Annotations" / "renamed.xml", filename="IMG_0001.JPG", objects=[("cell", (1, 2, 3, 4))])
    # broken XML, an annotation without image, an undecodable image
    (root / "Annotations" / "broken.xml").write_text("<annotation><filename>broken.jpg</filename><object>")
    _jpeg(root / "JPEGImages" / "broken.jpg")
    _voc_xml(root / "Annotations" / "missing.xml", filename="missing.jpg", objects=[("cell", (1, 1, 9, 9))])
    _voc_xml(root / "Annotations" / "corrupt.xml", filename="corrupt.jpg", objects=[("cell", (1, 1, 9, 9))])
    (root / "JPEGImages" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    return root


def _by_name(splits: DetectionSplits) -> dict[str, DetectionSample]:
    samples = [s for part in (splits.train, splits.val, splits.test) if part is not None for s in part]
    return {sample.image.stem: sample for sample in samples}


# ----------------------------------------------------------------------------------------------------------
# Real data: BCCD (Pascal VOC with split lists)


@pytest.fixture(scope="module")
def bccd(shared_data: Path) -> Path:
    root = shared_data / "detection" / "bccd"
    if not root.is_dir():
        pytest.skip(f"{root} is not there")
    return root


def test_bccd_split_lists_classes_and_boxes(bccd: Path) -> None:
    assert looks_like_detection_data(bccd)
    splits = load_detection_dataset(bccd)
    assert splits.source == "voc" and splits.classes == ["Platelets", "RBC", "WBC"]
    lists = {name: (bccd / "ImageSets" / "Main" / f"{name}.txt").read_text().split()
             for name in ("train", "val", "test")}
    assert {name: len(ids) for name, ids in lists.items()} == {"train": 205, "val": 87, "test": 72}
    assert splits.skipped == []  # every listed image is there and decodes
    for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        assert part is not None and [s.image.stem for s in part] == lists[name]
        for sample in part:
            assert (sample.width, sample.height) == (640, 480)
            boxes = sample.boxes
            assert boxes.dtype == np.float32 and sample.labels.dtype == np.int64 and len(boxes) == len(sample.labels)
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= 640).all() and (boxes[:, 3] <= 480).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # The dataset's two known bad boxes (xmin == xmax and ymin == ymax) are dropped and reported, not kept.
    dropped = sorted((Path(d.file).name, d.box, d.label, d.reason) for d in splits.dropped)
    assert dropped == [("BloodImage_00338.xml", (504.0, 337.0, 504.0, 337.0), "RBC", REASON_AREA),
                       ("BloodImage_00343.xml", (181.0, 329.0, 181.0, 329.0), "RBC", REASON_AREA)]
    summary = splits.summary()
    assert summary["dropped_count"] == 2 and summary["dropped_reasons"] == {REASON_AREA: 2}
    assert summary["adjusted_count"] == 0 and summary["skipped_count"] == 0  # no box pokes out of its image
    total = sum(summary[name]["boxes"] for name in ("train", "val", "test"))
    assert total + 2 == 4888  # SOURCE.txt: 4888 boxes in all
    assert summary["train"]["boxes_per_class"]["RBC"] > summary["train"]["boxes_per_class"]["WBC"] > 0
    assert json.loads(json.dumps(summary)) == summary


def test_bccd_evaluation_reads_the_test_list_with_the_models_classes(bccd: Path) -> None:
    samples, skipped, dropped = read_detection_annotations(bccd, classes=["WBC", "RBC"])
    assert len(samples) == 72 and skipped == []
    assert {d.reason for d in dropped} == {REASON_CLASS}  # Platelets are outside these classes
    assert {d.label for d in dropped} == {"Platelets"}
    assert samples.class_counts(["WBC", "RBC"]) == {"WBC": 71, "RBC": 805}


def test_bccd_dataset_items(bccd: Path) -> None:
    splits = load_detection_dataset(bccd)
    dataset = DetectionDataset(splits.train.subset([0, 1]), DetectionTransform(train=True), seed=1)
    images, targets = collate_detection([dataset[0], dataset[1]])
    for image, target, sample in zip(images, targets, splits.train.samples[:2]):
        assert image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1
        height, width = image.shape[1:]
        assert abs(width / 640 - height / 480) < 0.01 and 0.79 <= width / 640 <= 1.21
        assert target["boxes"].shape == (len(sample.labels), 4) and target["labels"].dtype == torch.int64
        assert (target["boxes"][:, 2] <= width).all() and (target["boxes"][:, 3] <= height).all()


# ----------------------------------------------------------------------------------------------------------
# Every kind of bad annotation


def test_bad_boxes_are_dropped_and_reported(messy_voc: Path) -> None:
    splits = load_detection_dataset(messy_voc, classes=["cell", "nucleus"])
    reasons = {(Path(d.file).stem, d.label, d.box, d.reason) for d in splits.dropped}
    assert reasons == {
        ("zero", "cell", (10.0, 10.0, 10.0, 30.0), REASON_AREA),
        ("negative", "cell", (30.0, 10.0, 20.0, 30.0), REASON_AREA),
        ("outside", "cell", (70.0, 10.0, 90.0, 30.0), REASON_OUTSIDE),
        ("outside", "nucleus", (5.0, -30.0, 20.0, -2.0), REASON_OUTSIDE),
        ("unknown", "dust", (1.0, 1.0, 5.0, 5.0), REASON_CLASS),
    }
    samples = _by_name(splits)
    assert samples["zero"].boxes.tolist() == [[1, 1, 9, 9]]  # the image's good box is kept
    assert len(samples["negative"].labels) == 0 and len(samples["outside"].labels) == 0  # images kept, empty
    assert samples["unknown"].boxes.tolist() == [[10, 10, 20, 20]] and samples["unknown"].labels.tolist() == [0]
    summary = splits.summary()
    assert summary["dropped_reasons"] == {REASON_AREA: 2, REASON_OUTSIDE: 2, REASON_CLASS: 1}


def test_box_partly_outside_is_clipped_and_reported(messy_voc: Path) -> None:
    splits = load_detection_dataset(messy_voc)
    sample = _by_name(splits)["partly"]
    assert sample.boxes.tolist() == [[50, 0, 64, 20]]
    assert [a.reason for a in sample.adjustments] == [CLIPPED]
    assert "(50, -5, 80, 20) -> (50, 0, 64, 20)" in sample.adjustments[0].detail
    summary = splits.summary()
    assert summary["adjusted_reasons"] == {CLIPPED: 1, SIZE_DIFFERS: 1}
    assert any(entry["image"].endswith("partly.jpg") for entry in summary["adjusted"])


def test_annotated_size_differing_from_the_image_uses_the_real_size(messy_voc: Path) -> None:
    sample = _by_name(load_detection_dataset(messy_voc))["resized"]
    assert (sample.width, sample.height) == (100, 80)
    assert sample.boxes.tolist() == [[10, 10, 90, 60]]  # inside the real 100x80 image: kept as written
    assert SIZE_DIFFERS in [a.reason for a in sample.adjustments]
    assert any("64x48" in a.detail and "100x80" in a.detail for a in sample.adjustments)


def test_unreadable_files_are_skipped_with_their_reason(messy_voc: Path) -> None:
    splits = load_detection_dataset(messy_voc)
    skipped = {Path(s.path).name: s.reason for s in splits.skipped}
    assert set(skipped) == {"broken.xml", "missing.xml", "corrupt.jpg"}
    assert skipped["broken.xml"].startswith("malformed XML (") and "line 1" in skipped["broken.xml"]
    assert "missing.jpg does not exist" in skipped["missing.xml"]
    assert "corrupt" not in _by_name(splits) and "missing" not in _by_name(splits)
    assert _by_name(splits)["renamed"].boxes.tolist() == [[1, 2, 3, 4]]  # wrong <filename>: the xml's stem works
    assert splits.summary()["skipped_count"] == 3


def test_images_without_boxes_are_kept_and_counted(messy_voc: Path) -> None:
    splits = load_detection_dataset(messy_voc)
    assert "empty" in _by_name(splits)
    summary = splits.summary()
    without = sum(summary[name]["images_without_boxes"] for name in ("train", "val"))
    assert without == 3  # empty, negative, outside
    assert splits.classes == ["cell", "dust", "nucleus"]  # found names, sorted, when classes is not given


def test_unlisted_voc_folder_is_held_out_reproducibly(messy_voc: Path) -> None:
    first = load_detection_dataset(messy_voc, val_fraction=0.25, seed=3)
    again = load_detection_dataset(messy_voc, val_fraction=0.25, seed=3)
    other = load_detection_dataset(messy_voc, val_fraction=0.25, seed=4)
    usable = 6 + 8  # good0..5 and zero, negative, outside, partly, unknown, empty, resized, renamed
    assert len(first.train) + len(first.val) == usable and len(first.val) == round(usable * 0.25)
    assert first.test is None and "held out" in first.split
    assert [s.image for s in first.val] == [s.image for s in again.val]
    assert {s.image for s in first.val} != {s.image for s in other.val}
    with pytest.raises(ParameterError, match="val_fraction"):
        load_detection_dataset(messy_voc, val_fraction=1.5)


def test_voc_lists_trainval_and_test(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    for index in range(10):
        _voc_image(root, f"im{index}", [("cell", (5, 5, 20, 20))])
    _write_lists(root, trainval=[f"im{i}" for i in range(8)] + ["ghost"], test=["im8"])
    splits = load_detection_dataset(root, val_fraction=0.25, seed=0)
    assert len(splits.train) == 6 and len(splits.val) == 2  # held out of trainval's 8 usable ids
    assert [s.image.stem for s in splits.test] == ["im8"]
    skipped = {Path(s.path).stem: s.reason for s in splits.skipped}
    assert "does not exist" in skipped["ghost"] and "trainval.txt" in skipped["ghost"]
    assert "not in any" in skipped["im9"]  # in no list: reported, not used
    # evaluation data: the test list
    samples, _, _ = read_detection_annotations(root, classes=["cell"])
    assert [s.image.stem for s in samples] == ["im8"]
    # train + val lists are used as given
    _write_lists(root, train=["im0", "im1", "im2"], val=["im3"])
    splits = load_detection_dataset(root)
    assert [s.image.stem for s in splits.train] == ["im0", "im1", "im2"]
    assert [s.image.stem for s in splits.val] == ["im3"]
    # separate validation data: train is the folder's train and val lists together
    other = tmp_path / "other"
    _voc_image(other, "v0", [("cell", (1, 1, 9, 9)), ("blob", (1, 1, 9, 9))])
    splits = load_detection_dataset(root, val=other)
    assert [s.image.stem for s in splits.train] == ["im0", "im1", "im2", "im3"]
    assert [s.image.stem for s in splits.val] == ["v0"]
    assert [(d.label, d.reason) for d in splits.dropped] == [("blob", REASON_CLASS)]


def test_nothing_usable_is_a_data_error(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    for index in range(3):
        _voc_xml(root / "Annotations" / f"gone{index}.xml", filename=f"gone{index}.jpg",
                 objects=[("cell", (1, 1, 9, 9))])
    (root / "JPEGImages").mkdir()
    with pytest.raises(DataError, match=r"No usable .* in .*voc: 3 files skipped.*does not exist"):
        load_detection_dataset(root)
    with pytest.raises(DataError, match="No usable image"):
        read_detection_annotations(root, classes=["cell"])
    # images there, but every box is bad
    bad = tmp_path / "bad"
    for index in range(3):
        _voc_image(bad, f"im{index}", [("cell", (9, 9, 1, 1))])
    with pytest.raises(DataError, match="zero or negative area"):
        load_detection_dataset(bad)
    with pytest.raises(DataError, match="not object-detection data"):
        load_detection_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_detection_dataset(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------------------
# COCO


def _coco(images: list[tuple[int, str, tuple[int, int]]], annotations: list[dict[str, object]],
          categories: list[tuple[int, str]]) -> dict[str, object]:
    return {
        "images": [{"id": i, "file_name": name, "width": w, "height": h} for i, name, (w, h) in images],
        "annotations": [{"id": n + 1, "iscrowd": 0, **a} for n, a in enumerate(annotations)],
        "categories": [{"id": i, "name": name, "supercategory": "thing"} for i, name in categories],
    }


def test_coco_file_crowd_and_non_contiguous_categories(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        _jpeg(tmp_path / "images" / name)
    data = _coco(
        [(10, "a.jpg", (64, 48)), (11, "b.jpg", (64, 48)), (12, "c.jpg", (64, 48)), (13, "d.jpg", (64, 48)),
         (14, "nowhere.jpg", (64, 48))],
        [{"image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 20]},
         {"image_id": 10, "category_id": 3, "bbox": [20, 5, 5, 5]},
         {"image_id": 11, "category_id": 5, "bbox": [0, 0, 64, 48], "iscrowd": 1},
         {"image_id": 11, "category_id": 99, "bbox": [1, 1, 5, 5]},
         {"image_id": 77, "category_id": 3, "bbox": [1, 1, 5, 5]},
         {"image_id": 12, "category_id": 5, "bbox": [1, 1, 0, 5]},
         {"image_id": 12, "category_id": 5, "bbox": [60, 40, 10, 10]}],
        [(7, "truck"), (3, "car"), (5, "bike")])
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    assert looks_like_detection_data(path) and looks_like_detection_data(tmp_path)
    splits = load_detection_dataset(path, val_fraction=0.25)
    assert splits.source == "coco" and splits.classes == ["car", "bike", "truck"]  # order of category id
    samples = _by_name(splits)
    assert samples["a"].boxes.tolist() == [[2, 3, 12, 23], [20, 5, 25, 10]]  # [x, y, w, h] -> x1 y1 x2 y2
    assert samples["a"].labels.tolist() == [2, 0]
    assert samples["c"].boxes.tolist() == [[60, 40, 64, 48]]  # clipped
    assert len(samples["b"].labels) == 0 and len(samples["d"].labels) == 0
    reasons = sorted((d.label, d.reason) for d in splits.dropped)
    assert reasons == sorted([("bike", REASON_CROWD), ("category 99", REASON_CATEGORY), ("car", REASON_IMAGE_ID),
                              ("bike", REASON_AREA)])
    assert [Path(s.path).name for s in splits.skipped] == ["annotations.json (image 'nowhere.jpg')"]
    assert "'nowhere.jpg' was not found" in splits.skipped[0].reason


def test_coco_split_files_and_folders(tmp_path: Path) -> None:
    # COCO's own layout: annotations/instances_<split>.json and images in a sibling folder named like the split
    root = tmp_path / "coco"
    for split, count in (("train2017", 3), ("val2017", 2)):
        names = [f"{split}_{i}.jpg" for i in range(count)]
        for name in names:
            _jpeg(root / split / name)
        data = _coco([(i + 1, n, (64, 48)) for i, n in enumerate(names)],
                     [{"image_id": i + 1, "category_id": 1, "bbox": [1, 1, 10, 10]} for i in range(count)],
                     [(1, "cell")])
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps({"images": [], "annotations": []}))
    assert looks_like_detection_data(root)
    splits = load_detection_dataset(root)
    assert (len(splits.train), len(splits.val), splits.test) == (3, 2, None)
    assert all(s.image.parent.name == "val2017" for s in splits.val)
    # Roboflow's layout: train/ valid/ test/, each with its JSON beside the images
    flow = tmp_path / "flow"
    for split, count in (("train", 4), ("valid", 2), ("test", 1)):
        names = [f"{split}{i}.jpg" for i in range(count)]
        for name in names:
            _jpeg(flow / split / name)
        data = _coco([(i, n, (64, 48)) for i, n in enumerate(names)],
                     [{"image_id": i, "category_id": 0, "bbox": [1, 1, 10, 10]} for i in range(count)], [(0, "cell")])
        (flow / split / "_annotations.coco.json").write_text(json.dumps(data))
    splits = load_detection_dataset(flow)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 1)
    samples, _, _ = read_detection_annotations(flow, classes=["cell"])
    assert [s.image.name for s in samples] == ["test0.jpg"]
    # two files that name no split cannot be told apart
    for name in ("first.json", "second.json"):
        (flow / name).write_text(json.dumps(_coco([], [], [(0, "cell")])))
    with pytest.raises(DataError, match="Cannot tell the splits"):
        load_detection_dataset(flow)


def test_malformed_coco_json_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="Cannot read the COCO annotation file"):
        load_detection_dataset(path)
    path.write_text('{"images": []}')
    with pytest.raises(DataError, match="not a COCO detection file"):
        load_detection_dataset(path)
    assert not looks_like_detection_data(path) and not looks_like_detection_data(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------------------
# Transform: boxes follow the pixels


_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]


def _rectangles(rng: np.random.Generator, width: int, height: int) -> list[tuple[int, int, int, int]]:
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(40):
        if len(boxes) == 4:
            break
        w, h = int(rng.integers(6, width // 2)), int(rng.integers(6, height // 2))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        if all(x + w + 3 <= a or c + 3 <= x or y + h + 3 <= b or d + 3 <= y for a, b, c, d in boxes):
            boxes.append((x, y, x + w, y + h))
    return boxes


def test_flip_and_rescale_keep_boxes_on_their_pixels() -> None:
    rng = np.random.default_rng(0)
    transform = DetectionTransform(train=True, scale=(0.5, 1.6))
    flips = set()
    for _ in range(60):
        width, height = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        rectangles = _rectangles(rng, width, height)
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        for (x1, y1, x2, y2), colour in zip(rectangles, _COLOURS):
            pixels[y1:y2, x1:x2] = colour
        boxes = np.array(rectangles, dtype=np.float32).reshape(-1, 4)
        labels = np.arange(len(rectangles))
        seed = int(rng.integers(1 << 30))
        flip, factor = transform.draw(np.random.default_rng(seed))  # what the call below draws
        image, out_boxes, out_labels = transform(Image.fromarray(pixels), boxes, labels, np.random.default_rng(seed))
        flips.add(flip)
        out = (image.permute(1, 2, 0).numpy() * 255).round()
        assert out_labels.tolist() == labels.tolist()
        assert abs(out.shape[1] - width * factor) <= 1 and abs(out.shape[0] - height * factor) <= 1
        for (x1, y1, x2, y2), colour in zip(out_boxes.tolist(), _COLOURS):
            assert 0 <= x1 < x2 <= out.shape[1] and 0 <= y1 < y2 <= out.shape[0]
            close = np.abs(out - np.array(colour)).sum(axis=2) < 90
            ys, xs = np.nonzero(close)
            assert len(xs), "the rectangle vanished"
            # every pixel of the colour lies inside the box, and the box hugs them (pixel i spans [i, i + 1))
            assert x1 - 1.5 <= xs.min() <= x1 + 2 and x2 - 2 <= xs.max() + 1 <= x2 + 1.5, (flip, factor)
            assert y1 - 1.5 <= ys.min() <= y1 + 2 and y2 - 2 <= ys.max() + 1 <= y2 + 1.5, (flip, factor)
    assert flips == {True, False}


def test_transform_eval_and_parameters() -> None:
    image = Image.new("RGB", (30, 20), (255, 0, 0))
    pixels, boxes, labels = DetectionTransform(train=False)(image, np.array([[1, 2, 3, 4]]), np.array([2]),
                                                            np.random.default_rng(0))
    assert pixels.shape == (3, 20, 30) and pixels.dtype == torch.float32 and float(pixels[0].min()) == 1.0
    assert boxes.tolist() == [[1, 2, 3, 4]] and labels.dtype == torch.int64
    _, boxes, _ = DetectionTransform(train=True).apply(image, np.array([[0, 2, 10, 4]]), np.array([0]),
                                                       flip=True, factor=1.0)
    assert boxes.tolist() == [[20, 2, 30, 4]]  # x1' = W - x2, x2' = W - x1
    with pytest.raises(ParameterError, match="scale"):
        DetectionTransform(train=True, scale=(1.2, 0.8))


def test_dataset_items_are_seeded_by_epoch_and_index(messy_voc: Path) -> None:
    splits = load_detection_dataset(messy_voc, val_fraction=0.25)
    dataset = DetectionDataset(splits.train, DetectionTransform(train=True, scale=(0.5, 2.0)), seed=5)
    shapes = [tuple(dataset[i][0].shape) for i in range(len(dataset))]
    assert shapes == [tuple(dataset[i][0].shape) for i in range(len(dataset))]  # same epoch: same items
    dataset.set_epoch(1)
    assert shapes != [tuple(dataset[i][0].shape) for i in range(len(dataset))]
    empty = [i for i, s in enumerate(splits.train) if len(s.labels) == 0]
    assert empty, "the fixture has images without boxes"
    _, target = dataset[empty[0]]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    images, targets = collate_detection([dataset[0], dataset[empty[0]]])
    assert len(images) == len(targets) == 2


# ----------------------------------------------------------------------------------------------------------
# Metrics


def _one(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None) -> dict[str, np.ndarray]:
    entry = {"boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4), "labels": np.array(labels, dtype=np.int64)}
    if scores is not None:
        entry["scores"] = np.array(scores, dtype=np.float64)
    return entry


def test_ap_by_hand_with_a_duplicate_and_a_loose_box() -> None:
    truth = [_one([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0])]
    found = [_one([[0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 7.2]], [0, 0, 0], [0.9, 0.8, 0.7])]
    # IoU of the third box with the second truth: 72 / 100 = 0.72.
    # At IoU 0.50..0.70 (5 thresholds): TP, FP (duplicate of a matched box), TP.
    #   precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> monotone from the right: 1, 2/3, 2/3.
    #   recall points 0.00..0.50 (51 of them) -> 1; 0.51..1.00 (50) -> 2/3.  AP = (51 + 50 * 2/3) / 101.
    # At IoU 0.75..0.95 (5 thresholds): TP, FP, FP -> recall never passes 1/2: AP = 51 / 101.
    high, low = (51 + 50 * 2 / 3) / 101, 51 / 101
    m = detection_metrics(found, truth, ["cell"], n_bootstrap=0)
    assert m["map_50"] == pytest.approx(high, abs=1e-12)
    assert m["map_75"] == pytest.approx(low, abs=1e-12)
    assert m["map_50_95"] == pytest.approx((5 * high + 5 * low) / 10, abs=1e-12)
    assert m["per_class"] == [{"class": "cell", "ap_50": pytest.approx(high),
                               "ap_50_95": pytest.approx((high + low) / 2), "n_true": 2, "n_predicted": 3}]
    assert m["n_images"] == 1 and m["n_true_boxes"] == 2 and m["map_50_ci"] is None


def test_iou_thresholds_and_highest_iou_matching() -> None:
    truth = [_one([[0, 0, 10, 10]], [0])]
    below = detection_metrics([_one([[0, 0, 4, 10]], [0], [0.9])], truth, ["cell"], n_bootstrap=0)  # IoU 0.4
    assert below["map_50"] == 0.0 and below["map_50_95"] == 0.0
    loose = detection_metrics([_one([[0, 0, 10, 7.2]], [0], [0.9])], truth, ["cell"], n_bootstrap=0)  # IoU 0.72
    assert loose["map_50"] == 1.0 and loose["map_75"] == 0.0 and loose["map_50_95"] == pytest.approx(0.5)
    # The first detection overlaps both true boxes; it takes the one it overlaps most (IoU 1 vs 2/3), leaving
    # the other for the second detection at every threshold.
    two = [_one([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])]
    found = [_one([[2, 0, 12, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])]
    assert detection_metrics(found, two, ["cell"], n_bootstrap=0)["map_50_95"] == 1.0
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[2, 0, 12, 10]]))[0, 0] == pytest.approx(8 / 12)


def test_class_without_truth_is_left_out_and_perfect_is_one() -> None:
    truth = [_one([[0, 0, 10, 10]], [0]), _one([[5, 5, 20, 30], [30, 30, 40, 40]], [0, 2])]
    perfect = [_one(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"])) for t in truth]
    perfect[0] = _one([[0, 0, 10, 10], [40, 40, 50, 50]], [0, 1], [0.9, 0.95])  # a "b" box: no "b" truth anywhere
    m = detection_metrics(perfect, truth, ["a", "b", "c"], n_bootstrap=200, seed=1)
    assert m["map_50"] == m["map_50_95"] == m["map_75"] == 1.0
    assert m["map_50_ci"] == [1.0, 1.0] and m["map_50_95_ci"] == [1.0, 1.0]
    b = m["per_class"][1]
    assert b == {"class": "b", "ap_50": None, "ap_50_95": None, "n_true": 0, "n_predicted": 1}
    text = format_detection_summary(m)
    assert "mAP@0.5       1.000" in text and "no true boxes in this set" in text
    none = detection_metrics([_one([], [], [])], [_one([], [])], ["a"], n_bootstrap=10)
    assert none["map_50"] is None and none["map_50_ci"] is None and "n/a" in format_detection_summary(none)
    with pytest.raises(ParameterError, match="one prediction per target"):
        detection_metrics([], truth, ["a", "b", "c"])
    with pytest.raises(ParameterError, match="no 'scores' key"):
        detection_metrics([_one([], [])], [_one([], [])], ["a"])
    with pytest.raises(ParameterError, match="outside 0..2"):
        detection_metrics([_one([[0, 0, 1, 1]], [3], [0.5])] * 2, truth, ["a", "b", "c"])


def _random_set(seed: int, n_images: int = 12) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for image in range(n_images):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 200, size=(n, 2))
        wh = rng.uniform(8, 80, size=(n, 2))
        true_boxes = np.concatenate([xy, xy + wh], axis=1)
        true_labels = rng.integers(0, 3, size=n)
        keep = rng.random(n) < 0.8
        jitter = rng.normal(0, 0.08, size=(n, 4)) * np.concatenate([wh, wh], axis=1)
        found = (true_boxes + jitter)[keep]
        labels = true_labels[keep]
        duplicates = rng.random(len(found)) < 0.2
        found = np.concatenate([found, found[duplicates] + rng.normal(0, 2, size=(int(duplicates.sum()), 4))])
        labels = np.concatenate([labels, labels[duplicates]])
        m = int(rng.integers(0, 5)) + (120 if image == 3 else 0)  # image 3: more than 100 detections
        xy = rng.uniform(0, 200, size=(m, 2))
        false = np.concatenate([xy, xy + rng.uniform(5, 60, size=(m, 2))], axis=1)
        found = np.concatenate([found, false])
        labels = np.concatenate([labels, rng.integers(0, 3, size=m) if image != 3 else np.zeros(m, dtype=np.int64)])
        found[:, 2:] = np.maximum(found[:, 2:], found[:, :2] + 1)
        predictions.append({"boxes": found, "labels": labels.astype(np.int64), "scores": rng.random(len(found))})
        targets.append({"boxes": true_boxes, "labels": true_labels.astype(np.int64)})
    return predictions, targets


def test_maps_match_pycocotools() -> None:
    cocoeval = pytest.importorskip("pycocotools.cocoeval", reason="pycocotools is not installed")
    from pycocotools.coco import COCO

    for seed in range(3):
        predictions, targets = _random_set(seed)
        categories = [{"id": c + 1, "name": str(c)} for c in range(3)]
        ground_truth: dict[str, list] = {"images": [], "annotations": [], "categories": categories}
        results = []
        for image, (prediction, target) in enumerate(zip(predictions, targets)):
            ground_truth["images"].append({"id": image + 1, "width": 300, "height": 300})
            for box, label in zip(target["boxes"], target["labels"]):
                w, h = box[2] - box[0], box[3] - box[1]
                ground_truth["annotations"].append({"id": len(ground_truth["annotations"]) + 1, "image_id": image + 1,
                                                    "category_id": int(label) + 1, "bbox": [box[0], box[1], w, h],
                                                    "area": w * h, "iscrowd": 0})
            for box, label, score in zip(prediction["boxes"], prediction["labels"], prediction["scores"]):
                results.append({"image_id": image + 1, "category_id": int(label) + 1, "score": float(score),
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = ground_truth
            coco.createIndex()
            evaluation = cocoeval.COCOeval(coco, coco.loadRes(results), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        # stats: [AP@0.5:0.95, AP@0.5, AP@0.75] for area "all" and 100 detections
        ours = detection_metrics(predictions, targets, ["0", "1", "2"], n_bootstrap=0)
        assert ours["map_50_95"] == pytest.approx(evaluation.stats[0], abs=1e-6)
        assert ours["map_50"] == pytest.approx(evaluation.stats[1], abs=1e-6)
        assert ours["map_75"] == pytest.approx(evaluation.stats[2], abs=1e-6)
        assert 0.2 < ours["map_50"] < 1.0  # a set with real mistakes, not a trivial one


def test_bootstrap_intervals_are_seeded_and_fast() -> None:
    import time

    predictions, targets = _random_set(7, n_images=150)
    start = time.perf_counter()
    m = detection_metrics(predictions, targets, ["a", "b", "c"], n_bootstrap=1000, seed=2)
    assert time.perf_counter() - start < 10
    low, high = m["map_50_ci"]
    assert low < m["map_50"] < high and high - low < 0.3
    low, high = m["map_50_95_ci"]
    assert low < m["map_50_95"] < high
    assert detection_metrics(predictions, targets, ["a", "b", "c"], n_bootstrap=50, seed=2)["map_50_ci"] == \
        detection_metrics(predictions, targets, ["a", "b", "c"], n_bootstrap=50, seed=2)["map_50_ci"]


# ----------------------------------------------------------------------------------------------------------
# Pictures and JSON


def test_draw_detections_and_json() -> None:
    image = Image.new("RGB", (120, 90), (128, 128, 128))
    picture = draw_detections(image, boxes=np.array([[10, 20, 60, 70]]), labels=np.array([1]),
                              scores=np.array([0.934]), classes=["a", "b"],
                              truth_boxes=np.array([[12, 22, 58, 68]]), truth_labels=np.array([1]))
    assert picture.size == image.size and image.getpixel((10, 45)) == (128, 128, 128)  # the input is untouched
    assert picture.getpixel((10, 45)) == (255, 127, 14)  # class 1's colour on the box edge
    assert (255, 255, 255) in [picture.getpixel((x, 22)) for x in range(14, 56)]  # dashed white truth
    assert detections_to_json(np.array([[1.26, 2, 3, 4.04]]), np.array([0]), np.array([0.123456]), ["a"]) == [
        {"label": "a", "score": 0.1235, "box": [1.3, 2.0, 3.0, 4.0]}]
