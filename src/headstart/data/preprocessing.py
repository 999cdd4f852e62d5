"""How images are prepared for a backbone (input side, normalisation, eval crop): the part of a backbone's config
that data transforms and saved bundles need, with no model code."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone: square input side, normalisation and eval crop.

    ``crop_pct`` follows timm: at eval time the short side is resized to ``input_size / crop_pct`` and the
    centre ``input_size`` square is cropped.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(
            input_size=int(data["input_size"]),
            mean=tuple(float(x) for x in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in data["std"]),  # type: ignore[arg-type]
            crop_pct=float(data.get("crop_pct", 0.875)),
            interpolation=str(data.get("interpolation", "bicubic")),
        )
