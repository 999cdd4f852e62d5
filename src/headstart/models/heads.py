"""Heads that sit on a backbone's pooled features and are saved in bundles: the MLP head, attaching a head to a
timm model, and scikit-learn heads written with skops (no pickle)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["HEADS", "SKLEARN_HEADS", "HEAD_FILE_TYPES", "FeatureMLP", "set_classifier", "rebuild_image_classifier",
           "save_sklearn_head", "load_sklearn_head", "plain_value"]

class FeatureMLP(nn.Module):
    """A classifier on pooled features with a bottleneck: standardise -> Linear -> BatchNorm -> ReLU -> Dropout ->
    Linear. It replaces a timm model's classifier, so the bundle stays an ordinary image classifier (predict,
    export, serve); the saved config's ``head`` entry (:meth:`config`) rebuilds it.

    >>> head = FeatureMLP(8, 3, hidden=4).eval()
    >>> head(torch.zeros(2, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, in_features: int, n_classes: int, *, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        self.in_features, self.hidden, self.dropout = in_features, hidden, dropout
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        self.bottleneck = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                        nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, n_classes)

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        with torch.no_grad():
            self.mean.copy_(mean)
            self.scale.copy_(std.clamp_min(1e-3))

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.bottleneck((pooled - self.mean) / self.scale)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pooled))

    def config(self) -> dict[str, Any]:
        return {"kind": "mlp", "in_features": self.in_features, "hidden": self.hidden, "dropout": self.dropout}


def set_classifier(model: nn.Module, head: nn.Module) -> nn.Module:
    """Put ``head`` where the timm ``model``'s classifier is (``pretrained_cfg['classifier']``, e.g. ``classifier``
    or ``fc`` or ``head.fc``), so ``model(x)`` and ``model.get_classifier()`` use it. Returns ``model``."""
    from headstart.errors import ParameterError

    name = model.pretrained_cfg.get("classifier", "classifier")
    if isinstance(name, str):
        parent = model
        *path, last = name.split(".")
        for part in path:
            parent = getattr(parent, part)
        setattr(parent, last, head)
    if model.get_classifier() is not head:
        raise ParameterError(
            f"The {type(model).__name__} backbone has no single classifier layer to replace (timm names"
            f" {name!r}), so a new head cannot be attached to it.",
            fix="Choose a backbone with one classifier (e.g. efficientnet_lite0, resnet50, convnext_tiny).")
    return model


def rebuild_image_classifier(config: dict[str, Any], files: Any = None) -> nn.Module:
    """The timm model an image-classifier bundle describes (random weights), with its head: linear, the
    :class:`FeatureMLP` of domain adaptation, a linear head on intermediate layers, or none (a scikit-learn head reads the pooled features)."""
    import timm

    head = config.get("head") or {"kind": "linear"}
    num_classes = int(head.get("backbone_classes", len(config["classes"])))
    if head.get("feature_layers"):  # a linear head on intermediate-layer features (Head2Toe)
        from headstart.models.multilayer import StageFeatures

        return StageFeatures(timm.create_model(config["architecture"], pretrained=False, num_classes=0),
                             num_classes=num_classes)
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=num_classes)
    if head.get("kind") == "mlp":
        # the pooled width (timm's head_hidden_size) differs from num_features for e.g. MobileNetV3, VGG
        in_features = int(head.get("in_features", model.num_features))
        model = set_classifier(model, FeatureMLP(in_features, len(config["classes"]), hidden=int(head["hidden"]),
                                                 dropout=float(head.get("dropout", 0.5))))
    return model


SKLEARN_HEADS = ("logistic", "linear_svm", "rbf_svm", "random_forest", "knn")
HEADS = ("linear", *SKLEARN_HEADS)
HEAD_FILE_TYPES = frozenset({  # the only non-default types a saved head may contain (checked on load)
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.tree._tree.Tree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
})



def plain_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def save_sklearn_head(estimator: Any, path: Any) -> Any:
    """Write a fitted head with skops (a zip of JSON + numpy arrays, no pickle), atomically."""
    from pathlib import Path

    import skops.io

    from headstart.storage import atomic_replace, temporary_sibling

    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        skops.io.dump(estimator, temporary)
        atomic_replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_sklearn_head(path: Any) -> Any:
    """Load a head written by :func:`save_sklearn_head`, refusing any type outside headstart's heads.

    Raises:
        BundleError: the file is damaged or contains types a headstart head never has.
    """
    import skops.io

    from headstart.errors import BundleError

    try:
        untrusted = skops.io.get_untrusted_types(file=path)
        unexpected = sorted(set(untrusted) - HEAD_FILE_TYPES)
        if unexpected:
            raise BundleError(f"{path} contains types that no headstart head uses: {unexpected}.",
                              fix="Only load heads saved by headstart; re-train or re-save the model.")
        return skops.io.load(path, trusted=list(untrusted))
    except BundleError:
        raise
    except Exception as error:  # noqa: BLE001 - any parse failure is a damaged file for the user
        raise BundleError(f"{path} is not a readable scikit-learn head ({type(error).__name__}: {error}).",
                          fix="The model folder may be damaged; re-save it.") from None
