"""End to end on real data with the real offline pretrained EfficientNet-Lite0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headstart import ImageClassifier


@pytest.mark.integration
def test_hymenoptera_linear_probe_is_well_above_chance(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "images" / "hymenoptera"
    classifier = ImageClassifier(strategy="linear_probe", epochs=3, image_size=160, progress=False)
    classifier.fit(data, out=tmp_path / "run")
    assert classifier.metrics_["accuracy"]["value"] >= 0.85, classifier.metrics_["accuracy"]
    reloaded = ImageClassifier.load(tmp_path / "run" / "model")
    metrics = reloaded.evaluate(data / "val", out=tmp_path / "eval")
    assert metrics["accuracy"]["value"] == pytest.approx(classifier.metrics_["accuracy"]["value"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_samples"] == 153
