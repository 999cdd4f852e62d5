"""Frozen-backbone features: extraction through a fast runtime, and their on-disk cache."""

from headstart.features.extract import (
    ExtractionReport,
    FeatureExtractor,
    extract_features,
    frozen_feature_size,
    frozen_view_features,
    view_names,
)
from headstart.features.runtime import (
    RUNTIMES,
    FeatureEngine,
    available_runtimes,
    create_engine,
)
from headstart.features.store import (
    FeatureKey,
    FeatureStore,
    default_cache_dir,
    file_digest,
    weights_digest,
)

__all__ = [
    "ExtractionReport",
    "FeatureExtractor",
    "extract_features",
    "frozen_feature_size",
    "frozen_view_features",
    "view_names",
    "RUNTIMES",
    "FeatureEngine",
    "available_runtimes",
    "create_engine",
    "FeatureKey",
    "FeatureStore",
    "default_cache_dir",
    "file_digest",
    "weights_digest",
]
