"""Labelled image sets: reading a `labels.csv`, missing labels, and the product-id split. Torch-free, so the command
line can read a set (and show the recipe's defaults) without loading torch.

- `load_labelled_set` reads a `labels.csv` (or a directory holding `labels.csv` and `images/`) and turns
  each row into a `Sample`: its image file, its split key and one label per classifier group of the
  taxonomy (read from the group's `label_column`). An empty value, or one the taxonomy does not list,
  is *missing*: that sample is masked out of that group's loss and metrics, and counted as skipped. When the
  taxonomy names a `title_column`, each sample also carries its product's title (`Sample.title`; None when the
  column is absent or empty), which the title model reads (learner/training/title.py).
- `SplitRule` assigns train/val/test from a hash of the product id (or of a grouping column), never from
  file order: the split is the same on every machine, stable when rows are added or reordered, and one
  product never lands in two splits.

Training and evaluation both read sets through this module. Must not: know about models or optimisers, or decode
images (learner/datasets/images.py does).
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from learner.model.taxonomy import AttributeGroup, Taxonomy

IMAGE_COLUMNS = ("image", "id")
IMAGE_SUFFIXES = ("", ".jpg", ".jpeg", ".png", ".webp")
MULTI_VALUE_SEPARATOR = "|"
IGNORE_INDEX = -100  # target of a sample whose label is missing in a single-choice group
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A labelled set cannot be read; the message says what to fix."""


# --- split ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitRule:
    """Deterministic train/val/test assignment by a hash of the split key (the product id).

    bucket = first 8 bytes of sha256(f"{salt}:{key}") as an integer / 2**64, in [0, 1);
    train if bucket < train, val if bucket < train + val, test otherwise.
    """

    salt: str = "shelfsight-split-v1"
    train: float = 0.70
    val: float = 0.15

    def __post_init__(self) -> None:
        if not (0.0 < self.train < 1.0 and 0.0 <= self.val < 1.0 and self.train + self.val <= 1.0):
            raise DataError(f"split fractions train={self.train} val={self.val} must be in (0, 1) and sum to <= 1")

    @property
    def test(self) -> float:
        return max(0.0, 1.0 - self.train - self.val)

    def bucket(self, key: str) -> float:
        digest = hashlib.sha256(f"{self.salt}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def split_of(self, key: str) -> str:
        b = self.bucket(key)
        if b < self.train:
            return "train"
        if b < self.train + self.val:
            return "val"
        return "test"

    def describe(self) -> str:
        return (
            f"sha256('{self.salt}:' + key)[:8] / 2**64 -> train < {self.train:g} <= val < "
            f"{self.train + self.val:g} <= test"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "test": round(self.test, 6), "rule": self.describe()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitRule:
        return cls(salt=str(d["salt"]), train=float(d["train"]), val=float(d["val"]))


# --- labelled set -----------------------------------------------------------------------------------

# A label: class index (single-choice group), tuple of class indices (multi-label group), or None (missing).
Label = int | tuple[int, ...] | None


@dataclass(frozen=True)
class Sample:
    sample_id: str
    image_path: Path
    split_key: str
    labels: dict[str, Label]
    title: str | None = None  # the product's title (the taxonomy's `title_column`; None: no column or empty)


@dataclass
class LabelledSet:
    source: Path
    taxonomy: Taxonomy
    samples: list[Sample]
    split_column: str  # the column whose value is the split key
    group_column: str | None = None  # set when samples are grouped by a column other than the image name
    skipped_rows: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped (e.g. image not found)
    missing_labels: dict[str, int] = field(default_factory=dict)  # group -> samples without a usable label
    unknown_values: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> value not in taxonomy -> n
    absent_columns: list[str] = field(default_factory=list)  # groups whose label_column the CSV lacks

    def split(self, rule: SplitRule, name: str) -> list[Sample]:
        if name == "all":
            return list(self.samples)
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {', '.join((*SPLITS, 'all'))}")
        return [s for s in self.samples if rule.split_of(s.split_key) == name]

    def summary(self, rule: SplitRule | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": str(self.source),
            "samples": len(self.samples),
            "split_column": self.split_column,
            "group_column": self.group_column,
            "skipped_rows": dict(self.skipped_rows),
            "missing_labels": dict(self.missing_labels),
            "unknown_values": {g: dict(v) for g, v in self.unknown_values.items()},
            "absent_columns": list(self.absent_columns),
        }
        if rule is not None:
            out["split_counts"] = dict(Counter(rule.split_of(s.split_key) for s in self.samples))
        return out


def load_labelled_set(
    path: str | Path,
    taxonomy: Taxonomy,
    image_column: str | None = None,
    group_column: str | None = None,
) -> LabelledSet:
    """Read a labelled set from a CSV file or a directory with `labels.csv` (and usually `images/`).

    The image column is `image_column`, else `image`, else `id`; its value names a file under `images/`
    or beside the CSV, with or without an extension. The split key is `group_column` when given (for
    example a product id shared by several photos), else the image column's value.
    """
    csv_path = _find_csv(Path(path))
    root = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if not columns:
        raise DataError(f"{csv_path} is empty (expected a header row)")
    if image_column is None:
        image_column = next((c for c in IMAGE_COLUMNS if c in columns), None)
        if image_column is None:
            raise DataError(f"{csv_path} has no image column: name one 'image' or 'id' (columns: {', '.join(columns)})")
    elif image_column not in columns:
        raise DataError(f"{csv_path} has no column {image_column!r} (columns: {', '.join(columns)})")
    if group_column is not None and group_column not in columns:
        raise DataError(f"{csv_path} has no group column {group_column!r} (columns: {', '.join(columns)})")
    groups = taxonomy.classifier_groups
    absent = [g.name for g in groups if g.label_column not in columns]
    if len(absent) == len(groups):
        wanted = ", ".join(f"{g.label_column} ({g.name})" for g in groups)
        raise DataError(f"{csv_path} has none of the taxonomy's label columns: {wanted}")

    samples: list[Sample] = []
    skipped: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    unknown: dict[str, Counter[str]] = {g.name: Counter() for g in groups}
    seen_ids: set[str] = set()
    for row in rows:
        name = (row.get(image_column) or "").strip()
        if not name:
            skipped["no image name"] += 1
            continue
        if name in seen_ids:
            skipped["duplicate image"] += 1
            continue
        image_path = _find_image(root, name)
        if image_path is None:
            skipped["image file not found"] += 1
            continue
        seen_ids.add(name)
        labels: dict[str, Label] = {}
        for g in groups:
            label = _parse_label(g, row.get(g.label_column), unknown[g.name])
            labels[g.name] = label
            if label is None:
                missing[g.name] += 1
        key = (row.get(group_column) or "").strip() if group_column else name
        title = (row.get(taxonomy.title_column) or "").strip() if taxonomy.title_column else ""
        samples.append(
            Sample(sample_id=name, image_path=image_path, split_key=key or name, labels=labels, title=title or None)
        )
    if not samples:
        detail = ", ".join(f"{n} {why}" for why, n in skipped.items()) or "no rows"
        raise DataError(f"{csv_path}: no usable labelled image ({detail}); images are looked up under {root}/images/")
    return LabelledSet(
        source=csv_path,
        taxonomy=taxonomy,
        samples=samples,
        split_column=group_column or image_column,
        group_column=group_column,
        skipped_rows=dict(skipped),
        missing_labels={g.name: missing[g.name] for g in groups},
        unknown_values={k: dict(v) for k, v in unknown.items() if v},
        absent_columns=absent,
    )


def _find_csv(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"data path {path} does not exist (give a labels.csv or a directory containing one)")
    if path.is_dir():
        csv_path = path / "labels.csv"
        if not csv_path.is_file():
            raise DataError(f"{path} has no labels.csv (expected {csv_path} beside an images/ directory)")
        return csv_path
    return path


def _find_image(root: Path, name: str) -> Path | None:
    base = Path(name)
    dirs = [Path()] if base.is_absolute() else [root / "images", root]
    for d in dirs:
        for suffix in IMAGE_SUFFIXES:
            candidate = d / (name + suffix)
            if candidate.is_file():
                return candidate
    return None


def _parse_label(group: AttributeGroup, raw: str | None, unknown: Counter[str]) -> Label:
    text = (raw or "").strip()
    if not text:
        return None
    if group.multi_label:
        indices: list[int] = []
        for part in (p.strip() for p in text.split(MULTI_VALUE_SEPARATOR)):
            if not part:
                continue
            if part in group.values:
                indices.append(group.index(part))
            else:
                unknown[part] += 1
        return tuple(sorted(set(indices))) if indices else None
    if text in group.values:
        return group.index(text)
    unknown[text] += 1
    return None


def class_counts(samples: Sequence[Sample], group: AttributeGroup) -> list[int]:
    """Number of samples carrying each value of `group` (missing labels are not counted)."""
    counts = [0] * len(group.values)
    for s in samples:
        label = s.labels.get(group.name)
        if label is None:
            continue
        for i in label if isinstance(label, tuple) else (label,):
            counts[i] += 1
    return counts
