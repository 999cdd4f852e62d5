"""Export: ONNX and TorchScript graphs match torch on real inputs, fail loudly when they do not, and run alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SAMPLE
from typer.testing import CliRunner

from headstart.cli import app
from headstart.deploy.export import PARITY_MAX_ABS_DIFF, SIDECAR_FILE, export_bundle
from headstart.deploy.predictor import load_predictor
from headstart.errors import ExportError

VAL_IMAGES = sorted((SAMPLE / "val").rglob("*.jpg"))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_torch_on_real_images_with_dynamic_batch(tiny_image_bundle: Path, tmp_path: Path,
                                                                fmt: str) -> None:
    out = tmp_path / fmt
    sidecar = export_bundle(tiny_image_bundle, out, format=fmt)  # the bundle's recorded validation photos
    parity = sidecar["parity"]
    assert parity["n_inputs"] == len(VAL_IMAGES) and parity["top1_identical"]
    assert parity["max_abs_diff"] <= PARITY_MAX_ABS_DIFF
    written = json.loads((out / SIDECAR_FILE).read_text())
    assert written["classes"] == ["ants", "bees"] and written["file"] == ("model.onnx" if fmt == "onnx" else "model.pt")
    assert written["inputs"][0]["shape"] == ["batch", 3, 64, 64]
    # any batch size: 1, then 5 real photos, compared with the bundle's own predictor
    predictor = load_predictor(tiny_image_bundle)
    items = predictor.read_inputs(VAL_IMAGES[:5])
    expected = predictor.predict(items)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        run = lambda pixels: session.run(None, {"images": pixels})[0]  # noqa: E731
    else:
        module = torch.jit.load(str(out / "model.pt"))
        run = lambda pixels: module(torch.from_numpy(pixels)).detach().numpy()  # noqa: E731
    pixels = predictor.collate([predictor.decode(item) for item in items])["images"]
    np.testing.assert_allclose(run(pixels[:1]), expected[:1], atol=PARITY_MAX_ABS_DIFF)
    np.testing.assert_allclose(run(pixels), expected, atol=PARITY_MAX_ABS_DIFF)


def test_exported_onnx_runs_with_onnxruntime_and_pillow_alone(tiny_image_bundle: Path, tmp_path: Path) -> None:
    """The README's few lines: the sidecar's preprocessing, done with Pillow + numpy in a fresh process, gives the
    bundle's probabilities (no headstart import)."""
    export_bundle(tiny_image_bundle, tmp_path / "onnx")
    script = '''
import json, sys
import numpy as np, onnxruntime
from PIL import Image
folder, image = sys.argv[1], sys.argv[2]
spec = json.load(open(f"{folder}/headstart-export.json"))
prep = spec["preprocessing"]
img = Image.open(image)
short = prep["resize_shorter_side_to"]
img.draft(img.mode, (short, short))  # large JPEGs decode at a reduced scale, as in training
img = img.convert("RGB")
w, h = img.size
img = img.resize((short, int(h * short / w)) if w <= h else (int(w * short / h), short), Image.Resampling.BICUBIC)
crop = prep["center_crop"]
left, top = round((img.width - crop) / 2), round((img.height - crop) / 2)
pixels = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.uint8).transpose(2, 0, 1)[None]
session = onnxruntime.InferenceSession(f"{folder}/{spec['file']}")
print(json.dumps(session.run(None, {"images": pixels})[0][0].tolist()))
'''
    image = VAL_IMAGES[0]
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "onnx"), str(image)], capture_output=True,
                            text=True, timeout=120, check=True)
    probabilities = np.array(json.loads(result.stdout))
    predictor = load_predictor(tiny_image_bundle)
    expected = predictor.predict(predictor.read_inputs([image]))[0]
    np.testing.assert_allclose(probabilities, expected, atol=PARITY_MAX_ABS_DIFF)


def test_parity_failure_fails_the_export_and_writes_nothing(tiny_image_bundle: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import headstart.deploy.export as export_module

    original = export_module.export_onnx_file

    def drifting_export(predictor: Any, path: Path, example: Any) -> Path:
        saved = {k: v.clone() for k, v in predictor.module.state_dict().items()}
        with torch.no_grad():
            for parameter in predictor.module.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        try:
            return original(predictor, path, example)
        finally:
            predictor.module.load_state_dict(saved)

    monkeypatch.setattr(export_module, "export_onnx_file", drifting_export)
    with pytest.raises(ExportError, match=r"does not match torch on \d+ real inputs: max \|difference\|"):
        export_bundle(tiny_image_bundle, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_export_needs_real_inputs(tiny_image_bundle: Path, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_image_bundle, bundle)
    (bundle / "validation.json").unlink()
    with pytest.raises(ExportError, match="--data"):
        export_bundle(bundle, tmp_path / "out")
    sidecar = export_bundle(bundle, tmp_path / "out", data=SAMPLE / "test")
    assert sidecar["parity"]["n_inputs"] == len(list((SAMPLE / "test").rglob("*.jpg")))


def test_sklearn_heads_export_to_onnx_or_refuse_clearly(tmp_path: Path) -> None:
    from conftest import tiny_params

    from headstart import ImageClassifier

    forest = ImageClassifier(**tiny_params(strategy="linear_probe", head="random_forest", calibrate=False))
    forest.fit(SAMPLE / "train", val=SAMPLE / "val")
    sidecar = export_bundle(forest.save(tmp_path / "forest"), tmp_path / "forest-onnx")
    assert sidecar["parity"]["top1_identical"] and sidecar["parity"]["max_abs_diff"] <= PARITY_MAX_ABS_DIFF
    with pytest.raises(ExportError, match="TorchScript"):
        export_bundle(tmp_path / "forest", tmp_path / "forest-ts", format="torchscript")
    # a calibration temperature is applied after the head, inside the graph too
    config_file = tmp_path / "forest" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "temperature": 2.5}))
    warm = export_bundle(tmp_path / "forest", tmp_path / "forest-t")
    assert warm["parity"]["max_abs_diff"] <= PARITY_MAX_ABS_DIFF and warm["temperature"]["value"] == 2.5
    predictor = load_predictor(tmp_path / "forest")
    items = predictor.read_inputs(VAL_IMAGES[:4])
    softened = predictor.predict(items)
    plain = forest.predict_proba(VAL_IMAGES[:4])
    assert np.abs(softened - 0.5).max() < np.abs(plain - 0.5).max()  # T > 1 pulls two-class rows towards 0.5
    svm = ImageClassifier(**tiny_params(strategy="linear_probe", head="linear_svm", calibrate=False))
    svm.fit(SAMPLE / "train", val=SAMPLE / "val")
    with pytest.raises(ExportError, match="Platt-calibrated SVM"):
        export_bundle(svm.save(tmp_path / "svm"), tmp_path / "svm-onnx")


@pytest.mark.integration
def test_real_bundle_exports_and_int8_reports_accuracy_and_speed(hymenoptera_bundle: Path, tmp_path: Path) -> None:
    sidecar = export_bundle(hymenoptera_bundle, tmp_path / "onnx", quantize=True)
    assert sidecar["parity"]["top1_identical"] and sidecar["parity"]["max_abs_diff"] <= PARITY_MAX_ABS_DIFF
    quantized = sidecar["quantized"]
    assert (tmp_path / "onnx" / "model.int8.onnx").is_file()
    assert quantized["n_validation"] == len(VAL_IMAGES)
    assert quantized["accuracy_change"] == pytest.approx(quantized["int8_accuracy"] - quantized["float_accuracy"],
                                                         abs=1e-3)
    assert quantized["float_speed"]["items_per_second"] > 0 and quantized["batch_speedup"] > 0
    assert quantized["size_mb"]["int8"] < quantized["size_mb"]["float"]
    torchscript = export_bundle(hymenoptera_bundle, tmp_path / "ts", format="torchscript")
    assert torchscript["parity"]["max_abs_diff"] <= PARITY_MAX_ABS_DIFF


def test_text_export_carries_tokenizer_and_matches(tiny_bert: Path, tmp_path: Path) -> None:
    from headstart import TextClassifier
    from headstart.data.text import TextSamples

    texts = ["good fun film", "awful dull plot", "great acting", "boring mess", "lovely story", "terrible script"] * 4
    labels = ["pos", "neg"] * 12
    samples = TextSamples.from_lists(texts, labels, source="inline")
    model = TextClassifier(str(tiny_bert), strategy="linear_probe", batch_size=8, progress=False, calibrate=False,
                           cache_dir="off", max_length=32).fit(samples, val=samples)
    bundle = model.save(tmp_path / "text")
    for fmt in ("onnx", "torchscript"):
        sidecar = export_bundle(bundle, tmp_path / f"text-{fmt}", format=fmt)
        assert sidecar["parity"]["top1_identical"] and sidecar["parity"]["max_abs_diff"] <= PARITY_MAX_ABS_DIFF
        assert [s["name"] for s in sidecar["inputs"]] == ["input_ids", "attention_mask"]
    assert (tmp_path / "text-onnx" / "preprocessor" / "tokenizer.json").is_file()


def test_cli_export_prints_parity(tiny_image_bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(tiny_image_bundle), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "Parity with torch on" in result.output and (tmp_path / "e" / "model.onnx").is_file()
    bad = CliRunner().invoke(app, ["export", str(tiny_image_bundle), "--out", str(tmp_path / "x"), "--format", "tflite"])
    assert bad.exit_code == 2 and "must be one of" in bad.output
