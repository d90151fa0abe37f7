"""Fitting the shift guard (learner/model/shift_guard.py) on the validation split, and what it withholds.

The cut-off is chosen on photos like the training set's, where the model keeps its promise: it is the lowest score
at which the images above it carry at most `max_withheld` (default 2%) of the values the auto-fill thresholds fill
there. Everything above it at serving time is treated as unlike the training photos: its values become suggestions
and the product goes to review. Nothing here sees an out-of-distribution photo: the cut-off is a statement about the
in-distribution tail, and how much of a user-photo or street-scene set falls above it is measured afterwards
(docs/model-card.md, "Shift guard").

Pure numpy: no model, no I/O. `guard_figures` is what `shelfsight evaluate` reports of the guard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from learner.inference.decoding import Decisions, ValueDecoder
from learner.model.shift_guard import PSI_BINS, ShiftGuard

DEFAULT_MAX_WITHHELD = 0.02


def fit_shift_guard(
    scores: np.ndarray,
    auto_filled: np.ndarray,
    groups: Sequence[str],
    max_withheld: float = DEFAULT_MAX_WITHHELD,
    fitted_on: Mapping[str, Any] | None = None,
) -> ShiftGuard:
    """The guard whose cut-off withholds at most `max_withheld` of the auto-filled values of the fitting set.

    `scores` (N,): each image's shift score; `auto_filled` (N,): how many of its values the thresholds auto-fill
    (the weight of withholding it). Images with nothing auto-filled cost nothing to withhold, so the cut-off is set
    on the values the promise is about, not on the images. The reference deciles for drift are of every score."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(auto_filled, dtype=np.float64)
    if s.ndim != 1 or s.shape != w.shape or len(s) == 0:
        raise ValueError("fit_shift_guard needs one score and one auto-filled count per image (and some images)")
    if not 0.0 <= max_withheld < 1.0:
        raise ValueError(f"max_withheld is a share in [0, 1), not {max_withheld}")
    order = np.argsort(-s, kind="stable")  # most unfamiliar first
    s_desc, w_desc = s[order], w[order]
    total = w.sum()
    withheld_above = np.cumsum(w_desc) / total if total > 0 else np.zeros(len(s))
    # a cut-off at s_desc[i] withholds the images strictly above it: those before the run of ties at s_desc[i]
    last_of_run = np.r_[s_desc[1:] != s_desc[:-1], True]
    candidates = np.flatnonzero(last_of_run)  # withholding everything up to and including index i
    share_if_cut_below = withheld_above[candidates]  # cut-off just below s_desc[i]: the run at s_desc[i] withheld
    ok = candidates[share_if_cut_below <= max_withheld]
    if len(ok) == 0:
        cutoff, withheld = float(s_desc[0]), 0.0  # even the most unfamiliar image carries too much: withhold none
    else:
        i = int(ok[-1])
        below = s_desc[i + 1] if i + 1 < len(s_desc) else s_desc[i] - 1.0
        cutoff, withheld = float(below), float(withheld_above[i])
    reference = tuple(float(v) for v in np.quantile(s, np.linspace(0.0, 1.0, PSI_BINS + 1)))
    return ShiftGuard(
        cutoff=round(cutoff, 6),
        reference=reference,
        max_withheld=max_withheld,
        withheld_share=round(withheld, 6),
        groups=tuple(groups),
        fitted_on={"images": len(s), "auto_filled_values": int(total), **dict(fitted_on or {})},
    )


def guard_report(guard: ShiftGuard, scores: np.ndarray, auto_filled: np.ndarray) -> dict[str, Any]:
    """What the guard does on a labelled set: images above the cut-off and the auto-filled values they carry."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(auto_filled, dtype=np.float64)
    above = guard.unfamiliar(s)
    total = float(w.sum())
    return {
        "cutoff": guard.cutoff,
        "images": len(s),
        "unfamiliar_images": int(above.sum()),
        "unfamiliar_share": float(above.mean()) if len(s) else None,
        "auto_filled_values": int(total),
        "withheld_values": int(w[above].sum()),
        "withheld_share": float(w[above].sum() / total) if total else None,
    }


def guard_figures(decoder: ValueDecoder, decisions: Decisions) -> dict[str, Any]:
    """What the shift guard withheld here: images above its cut-off, and the values their thresholds and floors
    alone would have auto-filled (per group and in all)."""
    assert decisions.unfamiliar is not None
    odd = decisions.unfamiliar
    withheld: dict[str, int] = {}
    would = 0
    for name, conf in decisions.confidence.items():
        passes = conf >= max(decoder.autofill_thresholds.get(name, 0.0), decoder.confidence_floors[name])
        would += int(passes.sum())
        withheld[name] = int((passes & odd).sum())
    total = sum(withheld.values())
    return {
        "images": len(odd),
        "unfamiliar_images": int(odd.sum()),
        "unfamiliar_share": float(odd.mean()) if len(odd) else None,
        "withheld_values": total,
        "withheld_share": total / would if would else None,
        "withheld_by_group": withheld,
    }
