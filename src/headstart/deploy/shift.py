"""Dataset shift between two sets of images, measured on backbone embeddings.

Two statistics, both on the pooled features of a frozen pretrained backbone:

- **MMD** (maximum mean discrepancy, Gretton et al. 2012) with a Gaussian kernel whose bandwidth is the median
  pairwise distance, and a **permutation test**: the domain labels are shuffled ``permutations`` times and the
  p-value is the share of shuffles whose MMD is at least the observed one (with the +1 correction, so it is never
  0). A small p-value says the two sets are not draws from one distribution.
- **Proxy A-distance** (Ben-David et al. 2007): a domain classifier (logistic regression) tries to tell the two
  sets apart, scored by stratified cross-validation on equal-sized sets; ``PAD = 2 (1 - 2 * error)``, from 0
  (indistinguishable) to 2 (perfectly separable). The classifier sees the top 32 principal components of the
  standardised embeddings: on all 1280 dimensions nearly any two photo sets are separable. It says how *large* a significant shift is.

The verdict combines them: no significant MMD -> ``no_shift``; significant with PAD below
:data:`SEVERE_PAD` -> ``shift`` (adaptation with unlabelled target images may help); PAD at or above it ->
``severe_shift`` (the domain classifier is right >= 95% of the time; adapt, and label some target images).
On Office-31 embeddings (docs/benchmarks.md) random halves of one domain give p > 0.05 and PAD ~0; DSLR vs webcam
(same objects, similar cameras, source-only accuracy 0.97) and amazon vs webcam (catalogue photos vs webcam
shots, source-only 0.76) are both clearly significant, with different PADs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import DataError, ParameterError

__all__ = ["SEVERE_PAD", "ShiftReport", "check_shift_options", "measure_shift", "mmd_permutation_test", "proxy_a_distance",
           "shift_verdict", "shift_between", "embed_images", "EmbeddingLog"]

SEVERE_PAD = 1.8  # domain-classifier accuracy 95%
PCA_COMPONENTS = 32
ALPHA = 0.05


@dataclass
class ShiftReport:
    """The outcome of :func:`measure_shift`."""

    n_a: int
    n_b: int
    mmd2: float
    p_value: float
    permutations: int
    proxy_a_distance: float
    domain_accuracy: float
    verdict: str  # no_shift | shift | severe_shift
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"MMD^2 {self.mmd2:.4f} (permutation p = {self.p_value:.3g}, {self.permutations} shuffles);"
                f" proxy A-distance {self.proxy_a_distance:.2f} (domain classifier accuracy"
                f" {self.domain_accuracy:.3f}); {self.n_a} vs {self.n_b} images.\n"
                f"Verdict: {self.verdict.replace('_', ' ')} - {self.explanation}")


def _subsample(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= limit else x[np.sort(rng.choice(len(x), limit, replace=False))]


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ParameterError(f"Shift needs two (n, dim) embedding arrays of one width; got {a.shape} and {b.shape}.",
                             fix="Embed both image sets with the same backbone.")
    for name, x in (("first", a), ("second", b)):
        if len(x) < 10:
            raise DataError(f"The {name} image set has {len(x)} images; measuring shift needs at least 10 per side.",
                            fix="Give each side at least 10 images (a few hundred for a reliable verdict).")
    return a, b


def mmd_permutation_test(a: np.ndarray, b: np.ndarray, *, permutations: int = 500, seed: int = 0
                         ) -> tuple[float, float]:
    """Biased MMD^2 between the rows of ``a`` and ``b`` (Gaussian kernel, median-distance bandwidth, features
    standardised on the pooled set) and its permutation-test p-value.

    >>> rng = np.random.default_rng(0)
    >>> same = mmd_permutation_test(rng.normal(size=(60, 5)), rng.normal(size=(60, 5)), permutations=200)
    >>> moved = mmd_permutation_test(rng.normal(size=(60, 5)), rng.normal(1.0, 1, (60, 5)), permutations=200)
    >>> same[1] > 0.05, moved[1] < 0.01
    (True, True)
    """
    a, b = _check(a, b)
    pooled = np.concatenate([a, b])
    pooled = (pooled - pooled.mean(0)) / (pooled.std(0) + 1e-6)
    squared = np.maximum((pooled**2).sum(1)[:, None] + (pooled**2).sum(1)[None, :] - 2 * pooled @ pooled.T, 0.0)
    bandwidth = np.median(squared[np.triu_indices(len(pooled), 1)])
    kernel = np.exp(-squared / max(bandwidth, 1e-12))
    n_a, n = len(a), len(pooled)
    rng = np.random.default_rng(seed)
    # signs v (1/n_a for the first set, -1/n_b for the second): MMD^2 = v^T K v; one column per shuffle
    base = np.where(np.arange(n) < n_a, 1.0 / n_a, -1.0 / (n - n_a))
    columns = [base] + [base[rng.permutation(n)] for _ in range(permutations)]
    statistics: list[np.ndarray] = []
    for start in range(0, len(columns), 100):
        v = np.stack(columns[start:start + 100], axis=1)
        statistics.append(((kernel @ v) * v).sum(0))
    values = np.concatenate(statistics)
    observed = float(values[0])
    p_value = float((1 + np.sum(values[1:] >= observed - 1e-12)) / (1 + permutations))
    return observed, p_value


def proxy_a_distance(a: np.ndarray, b: np.ndarray, *, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """Proxy A-distance ``2 (1 - 2 err)`` of a cross-validated logistic-regression domain classifier on equal-sized
    sets (the larger one subsampled), and the classifier's accuracy (standardised features, top 32 principal
    components, all fitted inside each fold)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = _check(a, b)
    rng = np.random.default_rng(seed)
    size = min(len(a), len(b))
    a, b = _subsample(a, size, rng), _subsample(b, size, rng)
    x = np.concatenate([a, b]).astype(np.float32)
    y = np.repeat([0, 1], size)
    # In 1280 dimensions a linear classifier separates almost any two photo sets (DSLR vs webcam: PAD 1.8 although a
    # source-only model transfers at 0.97); on the top principal components it measures the shift that matters.
    components = min(PCA_COMPONENTS, x.shape[1], len(x) * (folds - 1) // folds - 1)
    model = make_pipeline(StandardScaler(), PCA(components, random_state=seed), LogisticRegression(C=0.1, max_iter=2000))
    accuracy = float(np.mean(cross_val_score(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))))
    error = 1.0 - accuracy
    return float(np.clip(2 * (1 - 2 * error), 0.0, 2.0)), accuracy


def shift_verdict(p_value: float, pad: float, *, alpha: float = ALPHA) -> tuple[str, str]:
    """The plain-language verdict for a p-value and a proxy A-distance (see the module docstring)."""
    if p_value >= alpha:
        return "no_shift", (f"no significant difference (p >= {alpha}); a model trained on one set should work as"
                            " well on the other.")
    if pad < SEVERE_PAD:
        return "shift", ("the sets differ measurably but overlap; expect some loss of accuracy on the second set."
                         " Check it on a few labelled images; `headstart adapt` with unlabelled images may help.")
    return "severe_shift", ("a classifier tells the two sets apart almost perfectly; expect a large drop in"
                            " accuracy. Adapt with `headstart adapt` and label some images of the new domain.")


def check_shift_options(*, permutations: int, max_samples: int, seed: int, image_size: int | None = None) -> None:
    """Refuse option values :func:`measure_shift` / :func:`shift_between` cannot use: at least 19 shuffles (p-values
    below 0.05 need them), at least 10 images per side."""
    from headstart.errors import check_integer

    check_integer("shift", "permutations", permutations, low=19)
    check_integer("shift", "max_samples", max_samples, low=10)
    check_integer("shift", "seed", seed, low=0)
    check_integer("shift", "image_size", image_size, low=32, high=1024, optional=True)


def measure_shift(a: np.ndarray, b: np.ndarray, *, permutations: int = 500, max_samples: int = 1000,
                  seed: int = 0) -> ShiftReport:
    """MMD permutation test + proxy A-distance + verdict between two embedding sets (rows are images).

    Args:
        a, b: (n, dim) embeddings of the two image sets, from one backbone.
        permutations: shuffles for the MMD p-value.
        max_samples: each side is subsampled (seeded) to at most this many rows (the kernel is quadratic).
        seed: subsampling, shuffles and folds.

    Raises:
        ParameterError: arrays of different widths; DataError: fewer than 10 rows on a side.
    """
    check_shift_options(permutations=permutations, max_samples=max_samples, seed=seed)
    a, b = _check(a, b)
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, max_samples, rng), _subsample(b, max_samples, rng)
    mmd2, p_value = mmd_permutation_test(a, b, permutations=permutations, seed=seed)
    pad, accuracy = proxy_a_distance(a, b, seed=seed)
    verdict, explanation = shift_verdict(p_value, pad)
    return ShiftReport(n_a=len(a), n_b=len(b), mmd2=mmd2, p_value=p_value, permutations=permutations,
                       proxy_a_distance=pad, domain_accuracy=accuracy, verdict=verdict, explanation=explanation)


# -- image folders and bundles -> embeddings ---------------------------------------------------------------------


def bundle_reference_images(bundle_dir: str | os.PathLike[str], config_validation: dict[str, Any] | None) -> list[Path]:
    """The images that stand for a bundle's training data: its recorded validation split (held out from the same
    folder as the training images), those still on disk.

    Raises:
        DataError: the bundle records none, or none of them exist any more.
    """
    files = [] if not config_validation or config_validation.get("kind") != "files" else config_validation["inputs"]
    present = [Path(f) for f in files if Path(f).is_file()]
    if len(present) < 10:
        raise DataError(
            f"The model {bundle_dir} records {len(files)} validation images of its training data and {len(present)}"
            " of them exist here; a shift measurement needs at least 10.",
            fix="Pass the training image folder itself instead of the model folder.")
    return present


def embed_images(paths: Sequence[Path], model: Any, preprocessing: Any, architecture: str, *, runtime: str = "auto",
                 cache_dir: str | os.PathLike[str] | None = None, num_workers: int | None = None,
                 progress: bool = False) -> np.ndarray:
    """Pooled frozen features (centre crop) of ``paths`` through the feature store (``cache_dir="off"``: none)."""
    from headstart.features import FeatureExtractor, FeatureStore

    store = FeatureStore.open(cache_dir)
    extractor = FeatureExtractor(model, preprocessing=preprocessing, architecture=architecture, store=store,
                                 runtime=runtime, num_workers=num_workers, progress=progress)
    return extractor.extract(list(paths))


def shift_between(a: str | os.PathLike[str], b: str | os.PathLike[str], *, backbone: str | None = None,
                  image_size: int | None = None, permutations: int = 500, max_samples: int = 1000, seed: int = 0,
                  runtime: str = "auto", cache_dir: str | os.PathLike[str] | None = None, progress: bool = False
                  ) -> tuple[ShiftReport, dict[str, Any]]:
    """Measure the shift from image set ``a`` to image set ``b`` (folders of images in any subfolders).

    ``a`` may also be a model folder: its backbone (as trained) embeds both sets and its recorded validation
    images stand for its training data. Otherwise ``backbone`` (default efficientnet_lite0, pretrained) embeds.

    Returns:
        The report and a description of what was compared (paths, counts, backbone, skipped files).

    Raises:
        DataError: a folder is missing or has fewer than 10 usable images; ParameterError: bad options.
    """
    from headstart.bundle import is_bundle_folder, load_bundle
    from headstart.data.images import scan_unlabelled_images
    from headstart.errors import check_choice
    from headstart.features import RUNTIMES
    from headstart.models import (
        DEFAULT_BACKBONE,
        Preprocessing,
        create_backbone,
        get_backbone_spec,
    )

    check_shift_options(permutations=permutations, max_samples=max_samples, seed=seed, image_size=image_size)
    check_choice("shift", "runtime", runtime, RUNTIMES)
    a, b = Path(a).expanduser(), Path(b).expanduser()
    if is_bundle_folder(b):
        raise ParameterError(f"{b} is a model folder; the second set must be a folder of images.",
                             fix="Pass the model folder first (A) and the new images second (B).")
    skipped: list[Any] = []
    if is_bundle_folder(a):
        if backbone is not None or image_size is not None:
            raise ParameterError(f"{a} is a model folder: its own backbone and input size embed the images, so"
                                 " backbone / image_size cannot be chosen.",
                                 fix="Leave --backbone and --image-size unset, or pass an image folder as A.")
        bundle = load_bundle(a)
        if bundle.config.get("task", "image_classification") != "image_classification":
            raise ParameterError(f"{a} is a {bundle.config.get('task')} model; shift compares images through an"
                                 " image classifier's backbone.", fix="Pass an image-classifier model folder, or"
                                 " two image folders.")
        model, preprocessing, architecture = bundle.model, bundle.preprocessing, bundle.config["architecture"]
        embedder = f"the model {a}'s backbone"
        paths_a = bundle_reference_images(a, bundle.validation)
    else:
        spec = get_backbone_spec(backbone or DEFAULT_BACKBONE)
        preprocessing = spec.preprocessing()
        if image_size is not None:
            preprocessing = Preprocessing.from_dict({**preprocessing.to_dict(), "input_size": image_size})
        model, source = create_backbone(backbone or DEFAULT_BACKBONE, 0)
        architecture, embedder = spec.architecture, f"{spec.name} ({source.description})"
        paths_a, skipped_a = scan_unlabelled_images(a, role="first")
        skipped += skipped_a
    paths_b, skipped_b = scan_unlabelled_images(b, role="second")
    skipped += skipped_b
    model.eval()
    embeddings_a = embed_images(paths_a, model, preprocessing, architecture, runtime=runtime, cache_dir=cache_dir,
                                progress=progress)
    embeddings_b = embed_images(paths_b, model, preprocessing, architecture, runtime=runtime, cache_dir=cache_dir,
                                progress=progress)
    report = measure_shift(embeddings_a, embeddings_b, permutations=permutations, max_samples=max_samples, seed=seed)
    described = {"a": str(a), "b": str(b), "images_a": len(paths_a), "images_b": len(paths_b), "embedder": embedder,
                 "input_size": preprocessing.input_size,
                 "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]}
    return report, described


# -- a running service's inputs ----------------------------------------------------------------------------------


class EmbeddingLog:
    """The embeddings of the last ``window`` images a service predicted, and the shift of those against the
    model's training data (its recorded validation images, embedded once on the first request).

    ``embed`` maps a batch of the service's prepared inputs to pooled features; ``reference`` returns the
    reference embeddings (called once, lazily).
    """

    def __init__(self, window: int, *, embed: Callable[[Any], np.ndarray],
                 reference: Callable[[], np.ndarray]) -> None:
        from collections import deque

        self.window = window
        self.embed = embed
        self._reference_factory = reference
        self._reference: np.ndarray | None = None
        self._rows: deque[np.ndarray] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._reference_lock = threading.Lock()
        self.total = 0

    def add(self, inputs: Any) -> None:
        """Embed and log a batch of prepared inputs (the caller decides what an embedding failure means)."""
        rows = np.asarray(self.embed(inputs), dtype=np.float32)
        with self._lock:
            self._rows.extend(rows)
            self.total += len(rows)

    def logged(self) -> np.ndarray:
        with self._lock:
            return np.stack(list(self._rows)) if self._rows else np.zeros((0, 0), dtype=np.float32)

    def report(self, *, permutations: int = 200, seed: int = 0) -> dict[str, Any]:
        """The shift report between the reference and the logged embeddings, as JSON.

        Raises:
            DataError: fewer than 10 images logged, or no usable reference.
        """
        logged = self.logged()
        if len(logged) < 10:
            raise DataError(f"Only {len(logged)} images have been logged since the service started; the shift"
                            " statistic needs at least 10.", fix="Ask again after more predictions.")
        if self._reference is None:
            with self._reference_lock:  # embed the reference once, even when two requests ask at the same time
                if self._reference is None:
                    self._reference = np.asarray(self._reference_factory(), dtype=np.float32)
        report = measure_shift(self._reference, logged, permutations=permutations, seed=seed)
        return {**report.to_dict(), "logged_images": len(logged), "window": self.window,
                "predicted_since_start": self.total, "reference_images": len(self._reference)}
