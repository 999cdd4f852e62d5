"""One exception hierarchy for every user-facing failure.

Each error says what was expected, what was found, and how to fix it. The CLI prints the message of a
:class:`HeadstartError` (never a traceback) and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "check_integer",
    "HeadstartError",
    "ParameterError",
    "DataError",
    "WeightsNotFoundError",
    "BundleError",
    "NotFittedError",
    "ResumeError",
    "ExportError",
    "OverwriteError",
]


class HeadstartError(Exception):
    """Base class of every error headstart raises on purpose.

    Args:
        message: what went wrong, what was expected and what was found.
        fix: one sentence telling the user what to do about it.
    """

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message if fix is None else f"{message}\nFix: {fix}")


class ParameterError(HeadstartError, ValueError):
    """An argument or option has a value headstart cannot use."""


class DataError(HeadstartError):
    """The data on disk cannot be used as given (layout, labels, no usable files)."""


class WeightsNotFoundError(HeadstartError):
    """No source of pretrained weights for a backbone could be reached."""


class BundleError(HeadstartError):
    """A saved model folder is missing, incomplete or from an incompatible version."""


class NotFittedError(HeadstartError, AttributeError):
    """A method that needs a fitted estimator was called before ``fit`` or ``load``."""


class ResumeError(HeadstartError):
    """A run folder cannot be resumed (no checkpoint, or a different configuration)."""


class ExportError(HeadstartError):
    """A model could not be exported, or the exported model does not compute what torch computes."""


class OverwriteError(HeadstartError):
    """A write would replace or delete something headstart did not create (a user's folder, its own source)."""


def check_choice(owner: str, name: str, value: object, choices: "set[str] | list[str] | tuple[str, ...]") -> None:
    """Raise :class:`ParameterError` unless ``value`` is one of ``choices``.

    >>> check_choice("ImageClassifier", "strategy", "fine_tune", ("linear_probe", "fine_tune", "full"))
    >>> check_choice("ImageClassifier", "strategy", "finetune", ("linear_probe", "fine_tune"))
    Traceback (most recent call last):
    ...
    headstart.errors.ParameterError: The 'strategy' parameter of ImageClassifier must be one of ['fine_tune', 'linear_probe']. Got 'finetune'.
    Fix: Did you mean 'fine_tune'?
    """
    if value not in choices:
        close = [c for c in choices if str(value).replace("_", "").lower() == c.replace("_", "").lower()]
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be one of {sorted(choices)}. Got {value!r}.",
            fix=f"Did you mean {close[0]!r}?" if close else f"Use one of {sorted(choices)}.",
        )


def check_integer(owner: str, name: str, value: object, *, low: int, high: int | None = None,
                  optional: bool = False) -> None:
    """Raise :class:`ParameterError` unless ``value`` is an integer in ``[low, high]`` (``None`` too if ``optional``).

    >>> check_integer("shift", "permutations", 500, low=19)
    >>> check_integer("shift", "image_size", 0, low=32, high=1024, optional=True)
    Traceback (most recent call last):
    ...
    headstart.errors.ParameterError: The 'image_size' parameter of shift must be an integer in [32, 1024] or None. Got 0.
    Fix: Pass image_size (CLI: --image-size) as an integer in [32, 1024], or leave it unset for the default.
    """
    if optional and value is None:
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high):
        return
    expected = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
    raise ParameterError(
        f"The '{name}' parameter of {owner} must be {expected}{' or None' if optional else ''}. Got {value!r}.",
        fix=f"Pass {name} (CLI: --{name.replace('_', '-')}) as {expected}, or leave it unset for the default.")
