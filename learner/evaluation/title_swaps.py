"""Titles with one attribute word swapped for another value: how the title/photo conflict check is measured.

A clean catalog title usually names some of the product's attributes ("Puma Men Black Running Shoes" names its
gender and colour). `swap_value_word` replaces the word(s) of the product's labelled value with another value of the
same group, as a data-entry slip would ("Puma Women Black Running Shoes"): the photos still show the labelled value,
so the title and the photos now disagree, and the conflict check should say so. Products whose title does not name
their labelled value are not swapped (None): there is nothing to contradict.

The replacement is drawn with the group's value frequencies (`weights`, e.g. the training split's counts), so
common slips are common; values that contain the labelled one or are contained in it ("Blue" / "Navy Blue",
"White" / "Off White") are never drawn: such a title does not contradict the photos.

Pure functions: no model, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np


def value_pattern(value: str) -> re.Pattern[str]:
    """The value's words as a whole-word, case-blind pattern ("Navy Blue" matches "navy  blue", not "Navyblue")."""
    words = [re.escape(w) for w in value.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)


def names_value(title: str, value: str) -> bool:
    """Whether the title names the value in whole words."""
    return bool(value.strip()) and value_pattern(value).search(title) is not None


def overlapping(a: str, b: str) -> bool:
    """Whether one value's words contain the other's ("Blue" and "Navy Blue")."""
    wa, wb = a.lower().split(), b.lower().split()
    short, long_ = (wa, wb) if len(wa) <= len(wb) else (wb, wa)
    return any(long_[i : i + len(short)] == short for i in range(len(long_) - len(short) + 1))


def swap_value_word(
    title: str,
    value: str,
    values: Sequence[str],
    rng: np.random.Generator,
    weights: Mapping[str, float] | None = None,
) -> tuple[str, str] | None:
    """(new title, the value it now names) with every mention of `value` replaced by another of `values`, drawn
    with `weights` (uniform when None; values of weight 0 are never drawn); None when the title does not name
    `value` or no other value can be drawn."""
    if not names_value(title, value):
        return None
    candidates = [v for v in values if v != value and not overlapping(v, value)]
    w = np.array([1.0 if weights is None else float(weights.get(v, 0.0)) for v in candidates])
    if not candidates or w.sum() <= 0:
        return None
    new = candidates[int(rng.choice(len(candidates), p=w / w.sum()))]
    return value_pattern(value).sub(new, title), new
