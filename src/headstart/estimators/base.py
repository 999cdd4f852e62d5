"""The scikit-learn conventions every headstart estimator shares: parameters as given (``get_params`` /
``set_params``, so ``sklearn.base.clone`` works), a readable repr, and the not-fitted check."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import NotFittedError, ParameterError, check_integer

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["EstimatorBase", "restores_state_on_failure"]

# Parameters several estimators share, and what each must be (an estimator checks only those it has).
_INTEGERS = {"batch_size": (1, None, False), "epochs": (1, None, True), "seed": (0, None, False),
             "patience": (1, None, True), "devices": (1, None, False)}
# name -> (low, high, open interval, None allowed)
_NUMBERS = {"lr": (0.0, 1.0, True, True), "val_fraction": (0.0, 1.0, True, False),
            "drop_rate": (0.0, 0.95, False, False), "label_smoothing": (0.0, 0.5, False, False),
            "weight_decay": (0.0, 1.0, False, False)}


def restores_state_on_failure(fit: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a ``fit`` so that a failed or interrupted call leaves the estimator exactly as it was: still fitted
    with its previous model, or still unfitted, never half of one and half of the other."""

    @functools.wraps(fit)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        before = dict(self.__dict__)
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    return guarded


class EstimatorBase:
    """``get_params()`` returns the constructor arguments; ``repr`` shows the backbone and what was changed."""

    _fitted_attribute = "net_"  # set by fit / load; its absence means "not fitted"
    _unfitted_fix = "Call fit(DATA) first, or {name}.load(MODEL_FOLDER) to use a saved model."

    @classmethod
    def _get_param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as given (scikit-learn's contract; no parameter is itself an estimator, so
        ``deep`` changes nothing).

        >>> from headstart import ImageClassifier
        >>> ImageClassifier(epochs=3).get_params()["epochs"]
        3
        """
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> Self:
        """Change constructor arguments (checked when ``fit`` runs, as in scikit-learn); returns the estimator.

        Raises:
            ParameterError: a name that is not a parameter of this estimator.
        """
        names = self._get_param_names()
        for name, value in params.items():
            if name not in names:
                raise ParameterError(f"{type(self).__name__} has no parameter {name!r}.",
                                     fix=f"Use one of: {', '.join(names)}.")
            setattr(self, name, value)
        return self

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

    def _check_shared_params(self) -> None:
        """The checks of the parameters estimators share (batch size, epochs, learning rate, seed, ...); each
        estimator checks its own on top of these."""
        params = self.get_params()
        for name, (low, high, optional) in _INTEGERS.items():
            if name in params:
                check_integer(type(self).__name__, name, params[name], low=low, high=high, optional=optional)
        for name, (low, high, open_interval, optional) in _NUMBERS.items():
            if name not in params or (optional and params[name] is None):
                continue
            value = params[name]
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            inside = number and (low < value < high if open_interval else low <= value <= high)
            if not inside:
                bounds = f"({low:g}, {high:g})" if open_interval else f"[{low:g}, {high:g}]"
                raise self._bad(name, f"a number in {bounds}" + (" or None" if optional else ""))

    def _on_gpu(self) -> bool:
        """Whether this estimator's ``accelerator`` puts training on a GPU here."""
        import torch

        return self.accelerator not in ("auto", "cpu") or (self.accelerator == "auto" and torch.cuda.is_available())

    def _bad(self, name: str, expected: str) -> ParameterError:
        """The error for parameter ``name`` that is not ``expected``."""
        return ParameterError(
            f"The '{name}' parameter of {type(self).__name__} must be {expected}. Got {getattr(self, name)!r}.",
            fix=f"Pass {name} (CLI: --{name.replace('_', '-')}) as {expected}, or leave it unset for the default.")

    def _run_fingerprint(self, classes: Any, n_train: int, n_val: int) -> dict[str, Any]:
        """What a resumed run must share with the run it continues: the parameters (but where progress is shown
        and how many decoding workers there are, which change nothing), the classes and the split sizes."""
        params = {k: v for k, v in self.plain_params().items() if k not in ("progress", "num_workers")}
        return {"params": params, "classes": list(classes), "n_train": int(n_train), "n_val": int(n_val)}

    def plain_params(self) -> dict[str, Any]:
        """The parameters as JSON-ready values (paths as strings), for run configs and bundles."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.get_params().items()}
