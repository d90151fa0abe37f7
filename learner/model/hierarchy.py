"""Attribute hierarchy: which values of a lower single-choice group imply values of the groups above it.

A taxonomy may declare, for example, that the articleType `Tshirts` implies subCategory `Topwear` and
masterCategory `Apparel`:

    hierarchy:
      levels: [masterCategory, subCategory, articleType]   # top-down; every level a single-choice group
      implies:                                            # value of the last level -> the levels above it
        Tshirts: [Apparel, Topwear]

A value of the last level that `implies` does not list claims nothing: it may sit under any known
(upper-level) path. `derive_hierarchy` builds the table from a labelled CSV (the most frequent path of
each leaf value, with the rows that disagree counted), so nobody has to type it.

This module is data and its validation only: no models, no decoding (see `learner.inference.decoding`).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from learner.model.taxonomy import AttributeGroup, Taxonomy


@dataclass(frozen=True)
class Hierarchy:
    """`levels`: group names, top-down. `implies[leaf] = (value of levels[0], ..., value of levels[-2])`."""

    levels: tuple[str, ...]
    implies: Mapping[str, tuple[str, ...]]

    @property
    def leaf(self) -> str:
        return self.levels[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "implies": {k: list(v) for k, v in self.implies.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hierarchy:
        return cls(
            levels=tuple(str(v) for v in data["levels"]),
            implies={str(k): tuple(str(x) for x in v) for k, v in dict(data.get("implies") or {}).items()},
        )

    def to_yaml(self) -> str:
        """The `hierarchy:` section to paste into a taxonomy file."""
        return yaml.safe_dump({"hierarchy": self.to_dict()}, sort_keys=False, allow_unicode=True, width=120)

    def problems(self, groups: Mapping[str, AttributeGroup | Any]) -> list[tuple[tuple[Any, ...], str]]:
        """(key path, message) for each mistake against the taxonomy's groups (objects with kind, source, values)."""
        out: list[tuple[tuple[Any, ...], str]] = []
        if len(self.levels) < 2:
            out.append((("hierarchy", "levels"), "a hierarchy needs at least two levels (top-down group names)"))
        if len(set(self.levels)) != len(self.levels):
            out.append((("hierarchy", "levels"), "a group is listed twice"))
        for i, name in enumerate(self.levels):
            g = groups.get(name)
            if g is None:
                out.append((("hierarchy", "levels", i), f"unknown attribute group {name!r}"))
            elif g.kind != "single" or g.source != "classifier":
                out.append((("hierarchy", "levels", i), f"{name!r} must be a single-choice classifier group"))
        if out:
            return out
        leaf_values = set(groups[self.leaf].values)
        for leaf, path in self.implies.items():
            where = ("hierarchy", "implies", leaf)
            if leaf not in leaf_values:
                out.append((where, f"{leaf!r} is not a value of group {self.leaf!r}"))
            if len(path) != len(self.levels) - 1:
                out.append((where, f"needs {len(self.levels) - 1} values, one per level above {self.leaf!r}"))
                continue
            for level, value in zip(self.levels[:-1], path, strict=True):
                if value not in groups[level].values:
                    out.append((where, f"{value!r} is not a value of group {level!r}"))
        return out


@dataclass
class DerivedHierarchy:
    """What `derive_hierarchy` found: the table, rows whose path disagreed with their leaf's most frequent one
    (leaf -> count), rows skipped (a level empty or unknown to the taxonomy), and leaf values never seen."""

    hierarchy: Hierarchy
    rows: int
    conflicts: dict[str, int] = field(default_factory=dict)
    skipped_rows: int = 0
    unseen_leaves: list[str] = field(default_factory=list)


def derive_hierarchy(labels_csv: str | Path, taxonomy: Taxonomy, levels: Sequence[str]) -> DerivedHierarchy:
    """The implication table of `levels` (top-down group names) from a labels.csv (or a directory holding one):
    each leaf value implies the upper-level values it most often has in the file."""
    path = Path(labels_csv)
    if path.is_dir():
        path = path / "labels.csv"
    groups = [taxonomy.group(name) for name in levels]
    seen: dict[str, Counter[tuple[str, ...]]] = {}
    rows = skipped = 0
    with path.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            rows += 1
            values = tuple((row.get(g.label_column) or "").strip() for g in groups)
            if not all(v in g.values for v, g in zip(values, groups, strict=True)):
                skipped += 1
                continue
            seen.setdefault(values[-1], Counter())[values[:-1]] += 1
    implies: dict[str, tuple[str, ...]] = {}
    conflicts: dict[str, int] = {}
    leaf_group = groups[-1]
    for leaf in leaf_group.values:  # taxonomy order, so the YAML reads like the taxonomy
        if leaf not in seen:
            continue
        (path_values, n), *_ = seen[leaf].most_common(1)
        implies[leaf] = path_values
        other = sum(seen[leaf].values()) - n
        if other:
            conflicts[leaf] = other
    hierarchy = Hierarchy(levels=tuple(levels), implies=implies)
    problems = hierarchy.problems({g.name: g for g in taxonomy.groups})
    if problems:
        raise ValueError("; ".join(f"{'.'.join(map(str, w))}: {m}" for w, m in problems))
    unseen = [v for v in leaf_group.values if v not in implies]
    return DerivedHierarchy(hierarchy, rows, conflicts, skipped, unseen)
