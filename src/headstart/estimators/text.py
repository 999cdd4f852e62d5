"""``TextClassifier``: transfer learning for text classification with a pretrained transformers encoder.

>>> TextClassifier(strategy="lora")
TextClassifier(backbone='minilm', strategy='lora')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from rich.console import Console

from headstart.errors import ParameterError, check_choice
from headstart.estimators.encoder import EncoderClassifier, text_digest

__all__ = ["TextClassifier"]


class TextClassifier(EncoderClassifier):
    """Transfer learning for text classification (sentiment, topics, intents) from a table or .txt folders.

    Args:
        backbone: ``minilm`` (offline default), a transformers model folder, or a hub id (local cache).
        strategy: ``auto`` (``fine_tune`` from 1,000 training texts, else ``linear_probe``), ``linear_probe``,
            ``fine_tune`` (all layers, layer-wise learning-rate decay), ``lora`` (adapters + head only), or
            ``gradual_unfreeze``, ``lp_ft``, ``full`` (see :mod:`headstart.training.recipes`), or ``partial`` (after
            the solved head, only the last ``tune_blocks`` transformer layers train; the rest runs without gradients).
        tune_blocks: ``strategy="partial"``: how many of the last transformer layers train.
        head: ``linear`` or a scikit-learn head on frozen embeddings (``logistic``, ``linear_svm``, ``rbf_svm``,
            ``random_forest``, ``knn``).
        epochs: fine-tuning epochs (default 5). lr: peak learning rate (default 1e-4 fine_tune, 5e-4 lora).
        max_length: texts are truncated to this many tokens; batches are padded to their longest text.
        layer_decay: each layer's learning rate is this times the next one's (1 = no decay).
        lora_rank: LoRA rank; lora_merge: save the adapters folded into the weights (no peft needed to load).
        text_column, label_column: table columns (detected by name when None).
        devices, accelerator, precision: passed to Lightning Fabric (e.g. ``devices=2`` for two processes,
            ``precision="bf16-mixed"`` on a GPU).
        time_budget: seconds for the training stages (``"10m"``, ``"1.5h"``; None: no limit): each stage runs the
            epochs that fit, measured on its first steps; ``"auto"``: 5 min on a CPU, 30 min on a GPU with
            ``strategy="auto"``, else no limit. With ``auto``, training continues after the solved head only while
            the first trained epoch's validation gain is beyond the bootstrap noise.
        Others as :class:`headstart.ImageClassifier`.
    """

    task = "text_classification"
    modality = "text"

    def __init__(self, backbone: str = "minilm", *, strategy: str = "auto", head: str = "linear",
                 epochs: int | None = None, weights: str = "auto", lr: float | None = None, batch_size: int = 32,
                 max_length: int = 128, pooling: str = "mean", tune_blocks: int = 2, layer_decay: float = 0.8,
                 lora_rank: int = 8,
                 lora_merge: bool = True, drop_rate: float = 0.1, label_smoothing: float = 0.1,
                 weight_decay: float = 0.01, patience: int | None = 2, monitor: str = "val_loss",
                 class_weights: bool = False, seed: int = 0, val_fraction: float = 0.2,
                 text_column: str | None = None, label_column: str | None = None, allow_download: bool = True,
                 devices: int = 1, accelerator: str = "auto", precision: str = "32-true",
                 cache_dir: str | os.PathLike[str] | None = None, calibrate: bool = True,
                 time_budget: float | str | None = "auto", progress: bool = True) -> None:
        self.backbone, self.strategy, self.head, self.epochs, self.weights = backbone, strategy, head, epochs, weights
        self.lr, self.batch_size, self.max_length, self.pooling = lr, batch_size, max_length, pooling
        self.tune_blocks = tune_blocks
        self.layer_decay, self.lora_rank, self.lora_merge = layer_decay, lora_rank, lora_merge
        self.drop_rate, self.label_smoothing, self.weight_decay = drop_rate, label_smoothing, weight_decay
        self.patience, self.monitor, self.class_weights, self.seed = patience, monitor, class_weights, seed
        self.val_fraction, self.text_column, self.label_column = val_fraction, text_column, label_column
        self.devices, self.accelerator, self.precision = devices, accelerator, precision
        self.allow_download, self.cache_dir, self.calibrate, self.progress = allow_download, cache_dir, calibrate, progress
        self.time_budget = time_budget

    def _validate(self) -> None:
        self._validate_common()
        if not isinstance(self.max_length, int) or not 8 <= self.max_length <= 8192:
            raise self._bad("max_length", "an integer in [8, 8192]")
        check_choice("TextClassifier", "pooling", self.pooling, ("mean", "cls"))

    def _strategies(self) -> tuple[str, ...]:
        return (*super()._strategies(), "partial")

    def _load_splits(self, data: Any, val: Any) -> Any:
        from headstart.data.text import load_text_dataset

        return load_text_dataset(data, val=val, text_column=self.text_column, label_column=self.label_column,
                                 val_fraction=self.val_fraction, seed=self.seed)

    def _create_encoder(self, splits: Any, console: Console) -> tuple[torch.nn.Module, str]:
        from headstart.models.text import create_text_encoder

        encoder, source = create_text_encoder(self.backbone, weights=self.weights, max_length=self.max_length,
                                              pooling=self.pooling, allow_download=self.allow_download)
        lengths = [len(encoder.tokenizer(t, truncation=False)["input_ids"]) for t in splits.train.texts[:2000]]
        if lengths:
            cut = float(np.mean(np.asarray(lengths) > encoder.max_length))
            console.print(f"Tokens per text: median {int(np.median(lengths))}, 95th percentile"
                          f" {int(np.percentile(lengths, 95))}; max_length {encoder.max_length}"
                          + (f" truncates {cut:.1%} of texts." if cut else " (nothing truncated)."), highlight=False)
        return encoder, f"{self.backbone}: {source.description}"

    def _default_lr(self, strategy: str) -> float:
        # chosen on SST-2's dev set (docs/benchmarks.md): 1e-4 beat 5e-5 for MiniLM-L6 (dev 0.873 vs 0.848)
        return 5e-4 if strategy == "lora" else 1e-4

    def _default_epochs(self) -> int:
        return 5

    def _items(self, samples: Any) -> list[Any]:
        return list(samples.texts)

    def _digests(self, samples: Any) -> list[bytes]:
        return [text_digest(t) for t in samples.texts]

    def _training_order(self, items: list[Any], *, epoch: int) -> list[list[int]]:
        """Batches of similar length (less padding): shuffled, sorted by length within chunks of 50 batches, the
        batch order shuffled again."""
        lengths = np.array([len(text) for text in items])
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(items))
        chunk = self.batch_size * 50
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")]
                                for c in (order[i:i + chunk] for i in range(0, len(order), chunk))])
        batches = [order[i:i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def _prepare(self, items: list[Any]) -> dict[str, torch.Tensor]:
        return self._active_encoder.tokenize(list(items))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities for each text, shape (len(texts), len(classes_))."""
        if isinstance(texts, str):
            texts = [texts]
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ParameterError(f"predict_proba needs strings; item {bad[0]} is {type(texts[bad[0]]).__name__}.",
                                 fix="Pass a list of texts.")
        return self._predict_items(list(texts))

    def evaluate(self, data: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None,
                 n_bootstrap: int = 1000) -> dict[str, Any]:
        """Metrics on a labelled table or .txt class folder (labels must be among ``classes_``)."""
        from headstart.data.text import read_labelled_texts

        self._check_fitted("evaluate")
        samples, skipped, _ = read_labelled_texts(data, classes=self.classes_, text_column=self.text_column,
                                                  label_column=self.label_column)
        return self._evaluate_samples(samples, skipped, data=data, out=out, n_bootstrap=n_bootstrap,
                                      names=[t[:200] for t in samples.texts])
