"""The scikit-learn conventions every headstart estimator shares: parameters as given, a readable repr."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from headstart.errors import NotFittedError, ParameterError

__all__ = ["EstimatorBase"]


class EstimatorBase:
    """``get_params()`` returns the constructor arguments; ``repr`` shows the backbone and what was changed."""

    _fitted_attribute = "net_"  # set by fit / load; its absence means "not fitted"
    _unfitted_fix = "Call fit(DATA) first, or {name}.load(MODEL_FOLDER) to use a saved model."

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, as given."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if k == "backbone" or v != defaults[k]]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _check_fitted(self, method: str) -> None:
        """Raise :class:`NotFittedError` unless ``fit`` or ``load`` has run (``_fitted_attribute`` is set)."""
        if not hasattr(self, self._fitted_attribute):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet, so {method}() cannot run.",
                fix=self._unfitted_fix.format(name=type(self).__name__))

    def _bad(self, name: str, expected: str) -> ParameterError:
        """The error for parameter ``name`` that is not ``expected``."""
        return ParameterError(
            f"The '{name}' parameter of {type(self).__name__} must be {expected}. Got {getattr(self, name)!r}.",
            fix=f"Pass {name} (CLI: --{name.replace('_', '-')}) as {expected}, or leave it unset for the default.")

    def plain_params(self) -> dict[str, Any]:
        """The parameters as JSON-ready values (paths as strings), for run configs and bundles."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.get_params().items()}
