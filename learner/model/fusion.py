"""The learned fusion of a product's photo and title probabilities (`Fusion`, one `GroupFusion` per single-choice
group), as a bundle stores it (its manifest's `fusion` entry): the weights of the fused logit
`a * log p_photos + b * log p_title (+ bias)`, the fused auto-fill threshold, and the conflict cut-offs; and, apart,
the weights and threshold for a title that names none of the group's values (`unnamed`: "Puma Running" says less
about the colour than "Puma Black Running Shoes", and a title model reads both with confidence).

`learner.inference.product_decision` applies it; `learner.evaluation.fusion` fits it on validation.
Pure numpy: no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MANIFEST_KEY = "fusion"
NEVER = 2.0  # a threshold no probability reaches (as learner.evaluation.selective.NEVER)
_TINY = 1e-300


@dataclass(frozen=True)
class GroupFusion:
    """How one group's photo and title probabilities are fused, when the result is auto-filled, and what counts as
    a conflict. The defaults fuse as the plain product, auto-fill nothing and flag nothing."""

    image_weight: float = 1.0
    title_weight: float = 1.0
    bias: tuple[float, ...] = ()  # per value, added to the fused logit (empty: none)
    threshold: float = NEVER  # fused auto-fill threshold
    conflict_title: float = NEVER  # the title gives its value at least this ...
    conflict_image: float = -1.0  # ... and the photos give that value at most this: a conflict
    # how a title that names none of the group's values is fused (its own weights and threshold, never a conflict:
    # it cannot contradict the photos); None: like any other title
    unnamed: GroupFusion | None = None

    def for_titles(self, named: bool) -> GroupFusion:
        """The fusion of a title that names one of the group's values (`named`), or of one that names none."""
        return self if named or self.unnamed is None else self.unnamed

    def fuse(self, image: np.ndarray, title: np.ndarray) -> np.ndarray:
        """(N, C) fused probabilities of (N, C) photo and title probabilities."""
        z = self.image_weight * _log(image) + self.title_weight * _log(title)
        if self.bias:
            z = z + np.asarray(self.bias, dtype=np.float64)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    def conflicts(self, image: np.ndarray, title: np.ndarray) -> np.ndarray:
        """(N,) whether the title confidently names a value the photos give little probability (NaN rows: no)."""
        rows = np.arange(len(title))
        safe = np.nan_to_num(title, nan=0.0)
        said = safe.argmax(axis=1)
        with np.errstate(invalid="ignore"):
            return np.asarray(
                (safe[rows, said] >= self.conflict_title)
                & (np.nan_to_num(image, nan=1.0)[rows, said] <= self.conflict_image)
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_weight": self.image_weight,
            "title_weight": self.title_weight,
            "bias": list(self.bias),
            "threshold": self.threshold,
            "conflict_title": self.conflict_title,
            "conflict_image": self.conflict_image,
            **({"unnamed": self.unnamed.to_dict()} if self.unnamed is not None else {}),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GroupFusion:
        return cls(
            image_weight=float(raw.get("image_weight", 1.0)),
            title_weight=float(raw.get("title_weight", 1.0)),
            bias=tuple(float(v) for v in raw.get("bias") or ()),
            threshold=float(raw.get("threshold", NEVER)),
            conflict_title=float(raw.get("conflict_title", NEVER)),
            conflict_image=float(raw.get("conflict_image", -1.0)),
            unnamed=GroupFusion.from_dict(raw["unnamed"]) if raw.get("unnamed") else None,
        )


@dataclass(frozen=True)
class Fusion:
    """Per single-choice group, its `GroupFusion`; `report`: what the fit measured (learner.evaluation.fusion).
    Stored in the bundle manifest under "fusion"."""

    groups: dict[str, GroupFusion]
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"groups": {g: f.to_dict() for g, f in self.groups.items()}, "report": self.report}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Fusion | None:
        """The fusion a manifest stores, or None (a bundle without one: titles are not used)."""
        if not raw or not raw.get("groups"):
            return None
        return cls({str(g): GroupFusion.from_dict(f) for g, f in raw["groups"].items()}, dict(raw.get("report") or {}))


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(p, dtype=np.float64), _TINY))
