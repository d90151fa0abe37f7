"""The catalog taxonomy: attribute groups, their values, and how detector classes map onto them.

A taxonomy is declared once in a YAML file (see `learner/taxonomies/fashion-products.yaml`) and read
everywhere else from the `Taxonomy` object: heads of the classifier, label parsing, Label Studio
configurations and database attribute names all come from here. Loading validates the file and every
error names the offending key and its line, so a catalog manager can fix the file without reading code.

This module does no I/O beyond reading the file it is given and knows nothing of models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from learner.model.hierarchy import Hierarchy

SUPPORTED_SCHEMA_VERSIONS = (1,)
BUILTIN_TAXONOMIES = ("fashion-products",)


# auto-fill floors of a single-choice group whose taxonomy entry names none (see learner.evaluation.selective)
DEFAULT_BAND_FLOOR = 0.90  # the least confident tenth of the auto-filled values must be right this often
DEFAULT_CONFIDENCE_FLOOR = 0.5  # no value whose calibrated confidence is below this is ever auto-filled


class TaxonomyError(ValueError):
    """A taxonomy file is invalid. `problems` lists (location, message) pairs, one per mistake."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {where}: {msg}" for where, msg in problems)
        super().__init__(f"invalid taxonomy {source}:\n{lines}")


class GroupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["single", "multi"]
    source: Literal["classifier", "detector"] = "classifier"
    label_column: str | None = None
    colour: bool = False
    values: list[str] = Field(min_length=1)
    # precision auto-filled values of this group must reach (see learner.evaluation.selective); None: the default
    target_precision: float | None = None
    # the least confident auto-filled values (the last 10% of coverage) must be right at least this often
    band_floor: float | None = None
    # no value of this group whose calibrated confidence is below this is auto-filled, whatever the threshold
    confidence_floor: float | None = None

    @field_validator("target_precision", "band_floor", "confidence_floor")
    @classmethod
    def _precision_is_a_share(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 1.0:
            hint = f" (write {v / 100:g} for {v:g}%)" if 1.0 < v <= 100.0 else ""
            raise ValueError(f"precisions and floors are shares in (0, 1], e.g. 0.95, not {v:g}{hint}")
        return v

    @field_validator("values")
    @classmethod
    def _values_unique_and_named(cls, values: list[str]) -> list[str]:
        seen: set[str] = set()
        for v in values:
            if not isinstance(v, str) or not v.strip():
                raise ValueError("values must be non-empty strings")
            if v in seen:
                raise ValueError(f"value {v!r} is listed twice")
            seen.add(v)
        return values

    @model_validator(mode="after")
    def _single_needs_two_values(self) -> GroupSpec:
        if self.kind == "single" and len(self.values) < 2:
            raise ValueError("a single-choice group needs at least two values")
        auto_fill = {"target_precision": self.target_precision, "band_floor": self.band_floor}
        auto_fill["confidence_floor"] = self.confidence_floor
        named = [k for k, v in auto_fill.items() if v is not None]
        if named and (self.kind != "single" or self.source != "classifier"):
            raise ValueError(f"{', '.join(named)} applies to single-choice classifier groups only")
        return self


class HierarchySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: list[str]
    implies: dict[str, list[str]] = Field(default_factory=dict)


class TaxonomySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    name: str = Field(min_length=1)
    groups: dict[str, GroupSpec] = Field(min_length=1)
    detector_mapping: dict[str, dict[str, str]] = Field(default_factory=dict)
    hierarchy: HierarchySpec | None = None
    # the labelled set's column holding each product's title (read by the title model, learner.model.title_model)
    title_column: str | None = Field(default=None, min_length=1)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError(f"unsupported schema_version {v}; this ShelfSight reads {SUPPORTED_SCHEMA_VERSIONS}")
        return v


@dataclass(frozen=True)
class AttributeGroup:
    """One attribute group, as the rest of the code sees it."""

    name: str
    kind: Literal["single", "multi"]
    source: Literal["classifier", "detector"]
    values: tuple[str, ...]
    label_column: str
    colour: bool = False
    target_precision: float | None = None  # None: the auto-fill default (learner.evaluation.selective)
    band_floor: float | None = None  # None: DEFAULT_BAND_FLOOR
    confidence_floor: float | None = None  # None: DEFAULT_CONFIDENCE_FLOOR

    @property
    def auto_fill_band_floor(self) -> float:
        return self.band_floor if self.band_floor is not None else DEFAULT_BAND_FLOOR

    @property
    def auto_fill_confidence_floor(self) -> float:
        return self.confidence_floor if self.confidence_floor is not None else DEFAULT_CONFIDENCE_FLOOR

    @property
    def multi_label(self) -> bool:
        return self.kind == "multi"

    def index(self, value: str) -> int:
        return self.values.index(value)


@dataclass(frozen=True)
class Taxonomy:
    name: str
    groups: tuple[AttributeGroup, ...]
    detector_mapping: Mapping[str, Mapping[str, str]]
    schema_version: int = 1
    hierarchy: Hierarchy | None = None  # values of lower groups that imply values of upper ones
    title_column: str | None = None  # the labelled set's column of product titles (None: the set has none)

    # -- queries -------------------------------------------------------------------------------------
    def group(self, name: str) -> AttributeGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no attribute group {name!r} in taxonomy {self.name!r}")

    @property
    def classifier_groups(self) -> tuple[AttributeGroup, ...]:
        return tuple(g for g in self.groups if g.source == "classifier")

    @property
    def has_colour_target(self) -> bool:
        return any(g.colour for g in self.classifier_groups)

    def attributes_for_detection(self, class_name: str) -> Mapping[str, str]:
        return self.detector_mapping.get(class_name, {})

    # -- (de)serialisation ---------------------------------------------------------------------------
    def with_hierarchy(self, hierarchy: Hierarchy | None) -> Taxonomy:
        """This taxonomy with `hierarchy` (validated against its groups; TaxonomyError when it does not fit)."""
        data = self.to_dict()
        data.pop("hierarchy", None)
        if hierarchy is not None:
            data["hierarchy"] = hierarchy.to_dict()
        return Taxonomy.from_dict(data, source=f"{self.name} with hierarchy")

    def to_dict(self) -> dict[str, Any]:
        # optional keys only when set: the fingerprint of a taxonomy without them stays what it was
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "groups": {
                g.name: {
                    "kind": g.kind,
                    "source": g.source,
                    "label_column": g.label_column if g.source == "classifier" else None,
                    "colour": g.colour,
                    "values": list(g.values),
                    **{
                        k: v
                        for k, v in (
                            ("target_precision", g.target_precision),
                            ("band_floor", g.band_floor),
                            ("confidence_floor", g.confidence_floor),
                        )
                        if v is not None
                    },
                }
                for g in self.groups
            },
            "detector_mapping": {k: dict(v) for k, v in self.detector_mapping.items()},
        }
        if self.hierarchy is not None:
            out["hierarchy"] = self.hierarchy.to_dict()
        if self.title_column is not None:
            out["title_column"] = self.title_column
        return out

    def fingerprint(self) -> str:
        """A stable digest of the taxonomy's meaning (used to check bundle/taxonomy compatibility)."""
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>", lines: _LineIndex | None = None) -> Taxonomy:
        try:
            spec = TaxonomySpec.model_validate(data)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                loc = tuple(err["loc"])
                problems.append((_where(loc, lines), _message(err)))
            raise TaxonomyError(source, problems) from None
        problems = _cross_check(spec, lines)
        if problems:
            raise TaxonomyError(source, problems)
        groups = tuple(
            AttributeGroup(
                name=name,
                kind=g.kind,
                source=g.source,
                values=tuple(g.values),
                label_column=g.label_column or name,
                colour=g.colour,
                target_precision=g.target_precision,
                band_floor=g.band_floor,
                confidence_floor=g.confidence_floor,
            )
            for name, g in spec.groups.items()
        )
        return cls(
            name=spec.name,
            groups=groups,
            detector_mapping={k: dict(v) for k, v in spec.detector_mapping.items()},
            schema_version=spec.schema_version,
            hierarchy=None if spec.hierarchy is None else Hierarchy.from_dict(spec.hierarchy.model_dump()),
            title_column=spec.title_column,
        )


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Load and validate a taxonomy file, or one of the built-in ones by name (`fashion-products`)."""
    p = Path(path)
    if not p.exists() and str(path) in BUILTIN_TAXONOMIES:
        text = resources.files("learner").joinpath(f"taxonomies/{path}.yaml").read_text()
        source = f"builtin:{path}"
    else:
        try:
            text = p.read_text()
        except OSError as exc:
            raise TaxonomyError(str(path), [("file", f"cannot read: {exc.strerror or exc}")]) from None
        source = str(path)
    return parse_taxonomy(text, source)


def parse_taxonomy(text: str, source: str = "<string>") -> Taxonomy:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "file"
        raise TaxonomyError(source, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if root is None:
        raise TaxonomyError(source, [("file", "is empty")])
    lines = _LineIndex(root)
    if lines.duplicates:
        raise TaxonomyError(source, [(w, "key appears twice") for w in lines.duplicates])
    data = yaml.safe_load(text)
    return Taxonomy.from_dict(data, source, lines)


# --- line tracking ----------------------------------------------------------------------------------


class _LineIndex:
    """Maps key paths of a YAML document to 1-based line numbers, and notes duplicate keys."""

    def __init__(self, root: yaml.Node) -> None:
        self._lines: dict[tuple[Any, ...], int] = {}
        self.duplicates: list[str] = []
        self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self._lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    self.duplicates.append(f"{'.'.join(map(str, (*path, key)))} (line {key_node.start_mark.line + 1})")
                seen.add(key)
                self._lines[(*path, key)] = key_node.start_mark.line + 1
                self._walk(value_node, (*path, key))
                self._lines[(*path, key)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def line(self, path: Iterable[Any]) -> int | None:
        p = tuple(path)
        while p:
            if p in self._lines:
                return self._lines[p]
            p = p[:-1]
        return self._lines.get(())


def _where(loc: tuple[Any, ...], lines: _LineIndex | None) -> str:
    # pydantic puts validator names (e.g. "function-after[...]") in loc; keep only document keys
    keys = tuple(k for k in loc if not (isinstance(k, str) and ("[" in k or k.startswith("function"))))
    dotted = ".".join(str(k) for k in keys) or "(top level)"
    if lines is not None:
        n = lines.line(keys)
        if n is not None:
            return f"{dotted} (line {n})"
    return dotted


def _message(err: Any) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check its spelling)"
    return msg


def _cross_check(spec: TaxonomySpec, lines: _LineIndex | None) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for det_class, attrs in spec.detector_mapping.items():
        for group_name, value in attrs.items():
            loc = ("detector_mapping", det_class, group_name)
            group = spec.groups.get(group_name)
            if group is None:
                problems.append((_where(loc, lines), f"unknown attribute group {group_name!r}"))
            elif value not in group.values:
                problems.append((_where(loc, lines), f"{value!r} is not a value of group {group_name!r}"))
    for name, g in spec.groups.items():
        if g.source == "detector" and g.label_column is not None:
            problems.append((_where(("groups", name, "label_column"), lines), "detector groups take no label_column"))
    if not any(g.source == "classifier" for g in spec.groups.values()):
        problems.append((_where(("groups",), lines), "at least one group must come from the classifier"))
    if spec.hierarchy is not None:
        hierarchy = Hierarchy.from_dict(spec.hierarchy.model_dump())
        problems += [(_where(loc, lines), msg) for loc, msg in hierarchy.problems(spec.groups)]
    return problems
