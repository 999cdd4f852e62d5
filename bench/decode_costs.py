"""CPU cost per image of the decoding side of frozen-feature extraction (one core, hymenoptera photos), and of
two cheaper variants not adopted yet: resizing only the centre-crop box in one PIL call, and JPEG decoding at
reduced DCT scale for large photos; then, on camera-sized photos, the evaluation decode as it runs now
(``ImageDataset``: JPEG draft decoding to the resize target, ``data.transforms.draft_size``) against a full decode,
both through the same transform.

    .venv/bin/python bench/decode_costs.py [--large 40]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

from headstart.data.images import load_image
from headstart.data.transforms import ImageDataset, build_transform
from headstart.models import get_backbone_spec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "hymenoptera"


def box_resize(image: Image.Image, *, size: int, resize: int) -> torch.Tensor:
    """Resize-short-side-then-centre-crop as one resize of the source box that becomes the crop."""
    width, height = image.size
    new_w, new_h = (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
    scale_x, scale_y = width / new_w, height / new_h
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    box = (left * scale_x, top * scale_y, (left + size) * scale_x, (top + size) * scale_y)
    return F.pil_to_tensor(image.resize((size, size), Image.BICUBIC, box=box))


def per_image_ms(function, items) -> float:  # noqa: ANN001 - a tiny timing helper
    started = time.process_time()
    results = [function(item) for item in items]
    per_image = 1000 * (time.process_time() - started) / len(items)
    del results
    return per_image


def large_photo_decoding(paths: list[Path], transform) -> None:  # noqa: ANN001
    """Draft-mode against full decoding of camera-sized JPEGs, through the evaluation transform (CPU ms/image).

    The shared datasets hold small files (chest_xray and Office-31 are stored at 224-300 px), so the photos are
    hymenoptera's, enlarged 4x (about 2,000 x 1,500 px, JPEG quality 90) into a temporary folder this creates and
    removes: the decoder's cost follows the pixel count, not the content."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="headstart-decode-") as folder:
        large = []
        for index, path in enumerate(paths):
            with Image.open(path) as image:
                enlarged = image.convert("RGB").resize((image.width * 4, image.height * 4), Image.BICUBIC)
            large.append(Path(folder) / f"{index}.jpg")
            enlarged.save(large[-1], quality=90)
        drafted = ImageDataset(large, None, transform)
        full = lambda p: transform(load_image(p))  # noqa: E731 - the decode before draft mode
        with_draft = per_image_ms(lambda i: drafted[i][0], range(len(large)))
        without = per_image_ms(full, large)
        difference = np.mean([(drafted[i][0].float() - full(p).float()).abs().mean().item()
                              for i, p in enumerate(large)])
        width, height = Image.open(large[0]).size
    print(f"{len(large)} photos enlarged 4x (e.g. {width} x {height} px) to a {drafted.draft_size} px short side:"
          f" decode + transform {without:.1f} ms full, {with_draft:.1f} ms with draft decoding"
          f" ({without / with_draft:.1f}x); mean |pixel difference| {difference:.2f} of 255")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=40, help="photos to enlarge and time (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = sorted(DATA.rglob("*.jpg"))
    preprocessing = get_backbone_spec("efficientnet_lite0").preprocessing()
    transform = build_transform(preprocessing, train=False, as_uint8=True)
    resize = int(round(preprocessing.input_size / preprocessing.crop_pct))
    images = [load_image(p) for p in paths]  # warm the page cache
    decode = per_image_ms(load_image, paths)
    current = per_image_ms(transform, images)
    boxed = per_image_ms(lambda i: box_resize(i, size=preprocessing.input_size, resize=resize), images)
    difference = np.mean([(transform(i).float() - box_resize(i, size=preprocessing.input_size, resize=resize).float())
                          .abs().mean().item() for i in images])
    large = [p for p, i in zip(paths, images) if min(i.size) >= 512]
    full = per_image_ms(load_image, large)
    draft = per_image_ms(lambda p: load_image(p, draft_size=resize), large)
    print(f"{len(paths)} photos, {preprocessing.input_size} px, one core (CPU time per image)")
    print(f"decode {decode:.2f} ms; resize + centre crop + to uint8 tensor {current:.2f} ms")
    print(f"box resize instead {boxed:.2f} ms (mean |pixel difference| {difference:.3f} of 255)")
    print(f"{len(large)} photos with a short side >= 512 px: full decode {full:.1f} ms, reduced-DCT decode {draft:.1f} ms")
    if args.large:
        large_photo_decoding(paths[:: max(1, len(paths) // args.large)][: args.large], transform)


if __name__ == "__main__":
    main()
