"""``AudioClassifier``: transfer learning for spoken words and sounds from folders of audio files.

>>> AudioClassifier()
AudioClassifier(backbone='logmel:efficientnet_lite0')

Every clip is read once (mono, resampled to the encoder's rate) and padded or cropped to one length chosen
from the training clips (the 95th percentile of their durations): random crops while training, centre crops
otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from rich.console import Console

from headstart.errors import HeadstartError, ParameterError
from headstart.estimators.encoder import EncoderClassifier
from headstart.features.store import file_digest
from headstart.training.loop import shuffled_batches
from headstart.training.recipes import FINE_TUNE_MIN_EXAMPLES

__all__ = ["AudioClassifier"]


class AudioClassifier(EncoderClassifier):
    """Transfer learning for audio classification (spoken words, sounds) from labelled audio files.

    ``fit`` takes a folder of class folders of audio files, a flat folder with ``label_pattern``, a table of
    paths and labels, or :class:`headstart.data.audio.AudioSamples`.

    Args:
        backbone: ``logmel:<image backbone>`` (log-mel spectrogram into a pretrained image CNN; offline default
            ``logmel:efficientnet_lite0``), or a transformers audio model folder / hub id (wav2vec2, HuBERT, AST,
            Whisper encoder).
        strategy: ``auto`` (from 1,000 training clips ``fine_tune``, or on a CPU ``partial`` for an EfficientNet-
            family ``logmel:`` CNN; else ``linear_probe``), ``linear_probe``,
            ``fine_tune``, ``gradual_unfreeze``, ``lp_ft``, ``full``, ``lora`` (transformers models only), or
            ``partial`` (``logmel:`` EfficientNet-family CNNs: the last ``tune_blocks`` blocks train on the frozen
            blocks' output, computed once per clip; :mod:`headstart.training.partial`).
        epochs: fine-tuning epochs (default 8). lr: default 5e-4 (logmel), 5e-5 (transformers), 5e-4 (lora).
        clip_seconds: clip length; ``None`` covers 95% of the training clips (at least 0.5 s, at most 10 s).
        sample_rate: resampling target for ``logmel`` encoders; ``None``: the training files' most common rate,
            kept within [8000, 16000] Hz (upsampling 8 kHz speech only adds an empty upper half to the picture).
            Transformers models always use their own rate.
        image_size: side of the spectrogram picture for ``logmel`` encoders.
        spec_augment: SpecAugment time/frequency masking while fine-tuning a ``logmel`` encoder. Off by default:
            on FSDD the masks moved the ImageNet CNN's features so far that the solved head's loss on a training
            batch rose from 0.20 to 2.67 at the first step, and validation accuracy was lower (0.970 vs 0.983).
        freeze_feature_encoder: keep a transformers model's convolutional waveform encoder frozen.
        tune_blocks: ``strategy="partial"``: how many of the CNN's last blocks train (4 of EfficientNet-Lite0's 7:
            spectrograms are far from ImageNet photos, and on FSDD's held-out speakers 4 blocks reached validation
            accuracy 0.94 where 2 reached 0.72).
        group_column, group_pattern: speaker/recording groups (a table column, or a regex with one group on the
            file name, e.g. ``^\\d+_([^_]+)_``) so no group is in both training and validation.
        label_pattern: for a flat folder: a regex with one group on the file name giving the label.
        path_column, label_column: table columns (detected by name when None).
        Others (``time_budget`` included) as :class:`headstart.TextClassifier`.
    """

    task = "audio_classification"
    modality = "audio"

    def __init__(self, backbone: str = "logmel:efficientnet_lite0", *, strategy: str = "auto", head: str = "linear",
                 epochs: int | None = None, weights: str = "auto", lr: float | None = None, batch_size: int = 32,
                 clip_seconds: float | None = None, sample_rate: int | None = None, image_size: int = 160,
                 spec_augment: bool = False, freeze_feature_encoder: bool = True, tune_blocks: int = 4,
                 layer_decay: float = 0.8,
                 lora_rank: int = 8, lora_merge: bool = True, drop_rate: float = 0.2, label_smoothing: float = 0.1,
                 weight_decay: float = 0.01, patience: int | None = 3, monitor: str = "val_loss",
                 class_weights: bool = False, seed: int = 0, val_fraction: float = 0.2,
                 group_column: str | None = None, group_pattern: str | None = None, label_pattern: str | None = None,
                 path_column: str | None = None, label_column: str | None = None, devices: int = 1,
                 accelerator: str = "auto", precision: str = "32-true", allow_download: bool = True,
                 cache_dir: str | os.PathLike[str] | None = None, calibrate: bool = True,
                 time_budget: float | str | None = "auto", progress: bool = True) -> None:
        self.backbone, self.strategy, self.head, self.epochs, self.weights = backbone, strategy, head, epochs, weights
        self.lr, self.batch_size, self.clip_seconds, self.sample_rate = lr, batch_size, clip_seconds, sample_rate
        self.image_size, self.spec_augment, self.freeze_feature_encoder = image_size, spec_augment, freeze_feature_encoder
        self.tune_blocks = tune_blocks
        self.layer_decay, self.lora_rank, self.lora_merge = layer_decay, lora_rank, lora_merge
        self.drop_rate, self.label_smoothing, self.weight_decay = drop_rate, label_smoothing, weight_decay
        self.patience, self.monitor, self.class_weights, self.seed = patience, monitor, class_weights, seed
        self.val_fraction, self.group_column, self.group_pattern = val_fraction, group_column, group_pattern
        self.label_pattern, self.path_column, self.label_column = label_pattern, path_column, label_column
        self.devices, self.accelerator, self.precision = devices, accelerator, precision
        self.allow_download, self.cache_dir, self.calibrate, self.progress = allow_download, cache_dir, calibrate, progress
        self.time_budget = time_budget

    def _validate(self) -> None:
        self._validate_common()
        if self.clip_seconds is not None and (not isinstance(self.clip_seconds, (int, float))
                                              or not 0.1 <= self.clip_seconds <= 60):
            raise self._bad("clip_seconds", "a number of seconds in [0.1, 60] or None")
        if self.sample_rate is not None and (not isinstance(self.sample_rate, int)
                                             or not 4000 <= self.sample_rate <= 96000):
            raise self._bad("sample_rate", "an integer in [4000, 96000] or None")
        if not isinstance(self.image_size, int) or not 32 <= self.image_size <= 512:
            raise self._bad("image_size", "an integer in [32, 512]")
        if self.strategy == "partial" and not self.backbone.startswith("logmel:"):
            raise ParameterError(
                f"strategy='partial' trains the last blocks of a logmel:<EfficientNet-family CNN>; {self.backbone!r}"
                " is a transformers audio model.",
                fix="Use strategy='lora' or 'fine_tune' with a transformers model, or backbone='logmel:efficientnet_lite0'.")
        if self.strategy == "lora" and self.backbone.startswith("logmel:"):
            raise ParameterError(
                f"strategy='lora' needs a transformers audio model; {self.backbone!r} is an image CNN on spectrograms.",
                fix="Use strategy='fine_tune' with logmel backbones, or a wav2vec2/HuBERT/AST folder with 'lora'.")

    def _load_splits(self, data: Any, val: Any) -> Any:
        from headstart.data.audio import load_audio_dataset

        return load_audio_dataset(data, val=val, path_column=self.path_column, label_column=self.label_column,
                                  group_column=self.group_column, group_pattern=self.group_pattern,
                                  label_pattern=self.label_pattern, val_fraction=self.val_fraction, seed=self.seed)

    def _create_encoder(self, splits: Any, console: Console) -> tuple[torch.nn.Module, str]:
        from headstart.data.audio import choose_clip_seconds
        from headstart.models.audio import create_audio_encoder

        sample_rate = self.sample_rate or _common_rate(splits.train.paths)
        encoder, description = create_audio_encoder(
            self.backbone, weights=self.weights, allow_download=self.allow_download, image_size=self.image_size,
            spec_augment=self.spec_augment, sample_rate=sample_rate,
            freeze_feature_encoder=self.freeze_feature_encoder)
        durations = [d for d in (splits.train.durations or []) if d]
        self.clip_seconds_ = float(self.clip_seconds) if self.clip_seconds is not None else (
            choose_clip_seconds(durations) if durations else 1.0)
        self.sample_rate_ = int(encoder.sample_rate)
        if durations:
            console.print(f"Clips: median {np.median(durations):.2f} s, 95th percentile"
                          f" {np.percentile(durations, 95):.2f} s -> every clip padded/cropped to"
                          f" {self.clip_seconds_:.2f} s at {self.sample_rate_} Hz.", highlight=False)
        return encoder, f"{self.backbone}: {description}"

    def _strategies(self) -> tuple[str, ...]:
        return (*super()._strategies(), "partial")

    def _auto_strategy(self, n_train: int) -> tuple[str, str]:
        strategy, reason = super()._auto_strategy(n_train)
        if strategy != "fine_tune" or self._on_gpu() or not _splittable(self.backbone):
            return strategy, reason
        # FSDD holding out george (docs/benchmarks.md, issue 17): the last 4 blocks on cached input reached
        # validation accuracy 0.94 in 277 s (~21 s an epoch); fine-tuning the whole CNN 0.90 in 2,063 s
        return "partial", (f"{n_train} training clips (>= {FINE_TUNE_MIN_EXAMPLES}) on a CPU: the head first, then the"
                           f" CNN's last {self.tune_blocks} blocks on the frozen blocks' output, computed once per clip"
                           " (an epoch several times cheaper than fine_tune's; --strategy fine_tune for all blocks)")

    def _augmented_views(self, train_items: list[Any]) -> int:
        # random crops differ from the centre crop only for clips longer than the window
        return 2 if any(len(wave) > self._clip_samples() for wave in train_items) else 0

    def _default_lr(self, strategy: str) -> float:
        if strategy == "lora":
            return 5e-4
        # logmel: chosen on FSDD's validation takes (docs/benchmarks.md): 5e-4 without SpecAugment reached
        # val 0.983 where 1e-3 with SpecAugment reached 0.970
        return 5e-4 if self.backbone.startswith("logmel:") else 5e-5

    def _default_epochs(self) -> int:
        return 8

    def _key_extra(self) -> dict[str, Any]:
        return {"clip_samples": self._clip_samples()}

    def _clip_samples(self) -> int:
        from headstart.models.audio import clip_samples

        return clip_samples(self.clip_seconds_, self.sample_rate_)

    def _items(self, samples: Any) -> list[Any]:
        return self._read_waves(samples.paths)

    def _read_waves(self, paths: Sequence[Any], *, centre_window: bool = False) -> list[np.ndarray]:
        """The waves of ``paths``: whole, or (``centre_window``, for prediction) only the centre clip decoded."""
        from headstart.data.audio import read_audio

        window = self._clip_samples() / self.sample_rate_ if centre_window else None
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            return list(pool.map(lambda p: read_audio(p, sample_rate=self.sample_rate_, window_seconds=window),
                                 paths))

    def _digests(self, samples: Any) -> list[bytes]:
        return [file_digest(p) for p in samples.paths]

    def _training_order(self, items: list[Any], *, epoch: int) -> list[list[int]]:
        return shuffled_batches(len(items), self.batch_size, seed=self.seed, epoch=epoch)

    def _training_item(self, item: Any, rng: np.random.Generator) -> Any:
        from headstart.data.audio import fit_length

        return fit_length(item, self._clip_samples(), rng=rng)  # a random crop of a long clip

    def _inference_item(self, item: Any) -> Any:
        from headstart.data.audio import fit_length

        return fit_length(item, self._clip_samples(), rng=None)  # the centre crop

    def _prepare(self, items: list[Any]) -> dict[str, torch.Tensor]:
        return self._active_encoder.prepare(list(items))

    def _extra_config(self) -> dict[str, Any]:
        return {"clip_seconds": self.clip_seconds_, "sample_rate": self.sample_rate_}

    def _restore_extra(self, config: dict[str, Any]) -> None:
        self.clip_seconds_ = float(config["clip_seconds"])
        self.sample_rate_ = int(config["sample_rate"])

    def predict_proba(self, files: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Class probabilities for each audio file, shape (len(files), len(classes_)).

        Raises:
            AudioDecodeError: a file that cannot be read (the message names it).
        """
        self._check_fitted("predict_proba")
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        return self._predict_items(self._read_waves(list(files), centre_window=True))

    def evaluate(self, data: Any, *, out: str | os.PathLike[str] | None = None,
                 n_bootstrap: int = 1000) -> dict[str, Any]:
        """Metrics on labelled audio (class folders, a flat folder with ``label_pattern``, a table, or samples)."""
        from headstart.data.audio import read_labelled_audio

        self._check_fitted("evaluate")
        samples, skipped, _ = read_labelled_audio(data, classes=self.classes_, path_column=self.path_column,
                                                  label_column=self.label_column, label_pattern=self.label_pattern)
        return self._evaluate_samples(samples, skipped, data=data, out=out, n_bootstrap=n_bootstrap,
                                      names=[str(p) for p in samples.paths])


def _splittable(backbone: str) -> bool:
    """Whether ``logmel:<name>``'s CNN can be trained in part (``strategy="partial"``)."""
    from headstart.models import get_backbone_spec
    from headstart.models.split import supports_partial

    if not backbone.startswith("logmel:"):
        return False
    try:
        return supports_partial(get_backbone_spec(backbone.split(":", 1)[1]).timm_id)
    except HeadstartError:
        return False


def _common_rate(paths: Sequence[Any], *, low: int = 8000, high: int = 16000) -> int:
    """The most common sample rate among (up to 200 of) the files, kept within [low, high]."""
    from collections import Counter

    import soundfile

    rates = Counter()
    for path in list(paths)[:200]:
        try:
            rates[int(soundfile.info(str(path)).samplerate)] += 1
        except (RuntimeError, OSError, soundfile.LibsndfileError):
            continue
    rate = rates.most_common(1)[0][0] if rates else high
    return int(min(high, max(low, rate)))
