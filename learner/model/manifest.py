"""Reading a bundle's manifest without torch: what a bundle is, not its weights.

The manifest is the JSON document in a bundle's safetensors header (see `learner.model.bundle`). This module
reads it with safetensors' numpy front end, so the onnxruntime inference path, the registry and the review
loop can learn a bundle's version, taxonomy, preprocessing and thresholds without importing torch.
`BundleInfo` is that description; `ModelBundle` (torch) offers the same attributes plus the modules.

Must not import torch (a test asserts the daemon's onnxruntime path never does), load tensors or write files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from learner.model.fusion import MANIFEST_KEY as FUSION_KEY
from learner.model.fusion import Fusion
from learner.model.preprocessing import Preprocessing
from learner.model.shift_guard import ShiftGuard
from learner.model.taxonomy import Taxonomy, TaxonomyError
from learner.model.title_model import MANIFEST_KEY as TITLE_KEY
from learner.model.title_model import TitleModel, title_tensor_names

FORMAT = "shelfsight-bundle"
FORMAT_VERSION = 1
MANIFEST_KEY = "shelfsight.manifest"
# detector architectures that return instance masks (learner.model.detector builds them; kept here, torch-free, so
# the review loop can tell from a manifest whether annotators should outline objects)
MASK_ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "maskrcnn_mobilenet_v3_large_fpn")


class BundleError(RuntimeError):
    """A bundle cannot be used: missing, corrupt or written by an incompatible version."""


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read only the manifest (cheap: no tensors are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model bundle {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a ShelfSight bundle (corrupt or not safetensors): {exc}") from None
    raw = meta.get(MANIFEST_KEY)
    if raw is None:
        raise BundleError(f"{path} is a safetensors file without a ShelfSight manifest")
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: manifest is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format_version {version} is not supported by this ShelfSight "
            f"(reads {FORMAT_VERSION}); re-export it with a matching version"
        )
    return manifest


def manifest_taxonomy(manifest: dict[str, Any], path: str | Path) -> Taxonomy:
    try:
        return Taxonomy.from_dict(manifest["taxonomy"], source=f"{path}#taxonomy")
    except TaxonomyError as exc:
        raise BundleError(f"{path}: embedded taxonomy is invalid: {exc}") from None


@dataclass
class BundleInfo:
    """Everything the serving path needs to know about a bundle, without its weights (or torch)."""

    model_version: str
    taxonomy: Taxonomy
    preprocessing: Preprocessing
    backbone_name: str
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)  # per single-choice group (calibration)
    autofill_thresholds: dict[str, float] = field(default_factory=dict)  # per group, on calibrated confidence
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    detector: dict[str, Any] | None = None  # the detector spec as the manifest holds it
    created_at: float = 0.0
    tensor_sha256: str = ""
    shift_guard: ShiftGuard | None = None  # None: a bundle made before the guard (nothing withheld)
    title_model: TitleModel | None = None  # None: the bundle reads no titles (learner.model.title_model)
    fusion: Fusion | None = None  # None: the title is not read (learner.model.fusion)

    def threshold(self, group: str, value: str, default: float = 0.5) -> float:
        return self.thresholds.get(group, {}).get(value, default)

    @classmethod
    def read(cls, path: str | Path) -> BundleInfo:
        manifest = read_manifest(path)
        try:
            info = cls(
                model_version=manifest["model_version"],
                taxonomy=manifest_taxonomy(manifest, path),
                preprocessing=Preprocessing.from_dict(manifest["preprocessing"]),
                backbone_name=manifest["classifier"]["backbone"],
                thresholds=manifest.get("thresholds", {}),
                temperatures={k: float(v) for k, v in manifest.get("temperatures", {}).items()},
                autofill_thresholds={k: float(v) for k, v in manifest.get("autofill_thresholds", {}).items()},
                metrics=manifest.get("metrics", {}),
                lineage=manifest.get("lineage", {}),
                detector=manifest.get("detector") or None,
                created_at=float(manifest.get("created_at", 0.0)),
                tensor_sha256=str(manifest.get("tensor_sha256", "")),
                shift_guard=ShiftGuard.from_dict(manifest.get("shift_guard")),
                fusion=Fusion.from_dict(manifest.get(FUSION_KEY)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path}: manifest lacks or mangles {exc}") from None
        info.title_model = read_title_model(path, manifest, info.taxonomy)
        return info


def read_title_model(path: str | Path, manifest: dict[str, Any], taxonomy: Taxonomy) -> TitleModel | None:
    """The bundle's title model (its `title.` tensors read with safetensors' numpy front end, cast to float32, checked
    against their checksum and the taxonomy); None when the manifest has none. BundleError when it is unusable."""
    entry = manifest.get(TITLE_KEY)
    if not entry:
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in title_tensor_names(f.keys())}
        model = TitleModel.from_manifest(entry, tensors)
        model.check(taxonomy)
    except (SafetensorError, OSError, ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{path}: the title model is unusable: {exc}") from None
    return model


def detector_has_masks(detector: Any) -> bool:
    """Whether a manifest's `detector` entry (None: no detector) describes a mask detector."""
    return isinstance(detector, dict) and detector.get("arch") in MASK_ARCHS


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks: how a labels.csv, an image or a bundle file is identified in
    lineage and registry records, and how an exported ONNX file is tied to its bundle. Torch-free."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
