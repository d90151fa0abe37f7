"""Uncertainty measures: the probabilities of one group's candidates (best first) -> how uncertain the model is,
in [0, 1] (higher is more uncertain). The routing policy ranks routed products by it (`learner/review/policy.py`).

Pure functions of numbers: no taxonomy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

UncertaintyMeasure = Callable[[Sequence[float], bool, int], float]
"""(confidences best first, multi_label, number of values in the group) -> uncertainty in [0, 1], higher is more
uncertain. For a single-choice group the confidences are the model's top-k softmax probabilities; for a
multi-label group each confidence is an independent yes/no probability and the group is as uncertain as its most
uncertain value."""


def _binary(p: float) -> tuple[float, float]:
    p = min(max(p, 0.0), 1.0)
    return max(p, 1.0 - p), min(p, 1.0 - p)


def least_confidence(confidences: Sequence[float], multi_label: bool, n_values: int) -> float:
    """1 - p(best), scaled so a uniform guess over the group's values scores 1."""
    if not confidences:
        return 1.0
    if multi_label:
        return max(2.0 * (1.0 - _binary(c)[0]) for c in confidences)
    floor = 1.0 / max(n_values, 2)
    return min(1.0, max(0.0, (1.0 - confidences[0]) / (1.0 - floor)))


def margin(confidences: Sequence[float], multi_label: bool, n_values: int) -> float:
    """1 - (p(best) - p(second)): two values nearly tied score near 1."""
    if not confidences:
        return 1.0
    if multi_label:
        return max(1.0 - (_binary(c)[0] - _binary(c)[1]) for c in confidences)
    second = confidences[1] if len(confidences) > 1 else max(0.0, 1.0 - confidences[0])
    return min(1.0, max(0.0, 1.0 - (confidences[0] - second)))


def entropy(confidences: Sequence[float], multi_label: bool, n_values: int) -> float:
    """Shannon entropy normalised by its maximum. Only the top-k probabilities are known: the remaining mass is
    spread evenly over the other values (a good approximation when k is small against the group)."""
    if not confidences:
        return 1.0
    if multi_label:
        return max(_binary_entropy(c) for c in confidences)
    n = max(n_values, len(confidences), 2)
    probs = [min(max(c, 0.0), 1.0) for c in confidences]
    rest = max(0.0, 1.0 - sum(probs))
    others = n - len(probs)
    if others > 0 and rest > 0:
        probs.extend([rest / others] * others)
    h = -sum(p * math.log(p) for p in probs if p > 0)
    return min(1.0, max(0.0, h / math.log(n)))


def _binary_entropy(p: float) -> float:
    p = min(max(p, 0.0), 1.0)
    if p in (0.0, 1.0):
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


UNCERTAINTY_MEASURES: dict[str, UncertaintyMeasure] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
}


def uncertainty_measure(name_or_fn: str | UncertaintyMeasure) -> UncertaintyMeasure:
    if callable(name_or_fn):
        return name_or_fn
    try:
        return UNCERTAINTY_MEASURES[name_or_fn]
    except KeyError:
        raise ValueError(
            f"unknown uncertainty measure {name_or_fn!r}; choose one of {sorted(UNCERTAINTY_MEASURES)}"
        ) from None
