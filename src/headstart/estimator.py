"""The scikit-learn conventions every headstart estimator shares: parameters as given, a readable repr."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

__all__ = ["EstimatorBase"]


class EstimatorBase:
    """``get_params()`` returns the constructor arguments; ``repr`` shows the backbone and what was changed."""

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, as given."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if k == "backbone" or v != defaults[k]]
        return f"{type(self).__name__}({', '.join(changed)})"

    def plain_params(self) -> dict[str, Any]:
        """The parameters as JSON-ready values (paths as strings), for run configs and bundles."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.get_params().items()}
