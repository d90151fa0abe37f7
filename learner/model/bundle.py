"""Model bundle: one self-describing file per model version.

A bundle is a single safetensors file. Its tensors are the classifier's weights (`classifier.*`),
when the detector was fine-tuned the detector's (`detector.*`), and when it reads titles the title model's
(`title.*`, learner/model/title_model.py, described by the manifest key `title_model`). Its header metadata holds one
JSON manifest that says everything needed to use it without guessing: the taxonomy, the backbone, the
preprocessing, per-class thresholds, the detector spec, evaluation metrics and lineage (parent version,
training data, recipe). A SHA-256 over the tensors detects a corrupt file; `format_version` detects a
bundle written by an incompatible ShelfSight. A calibrated bundle (`shelfsight models calibrate`) also holds
per-group temperatures, auto-fill thresholds and how they were fitted; a bundle without them behaves as
before (every value auto-filled). Calibrating rewrites the file (its SHA-256 changes), not the tensors.

safetensors never executes code while loading, so a bundle from elsewhere is safe to open.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from learner.model.backbones import Preprocessing
from learner.model.classifier import AttributeClassifier
from learner.model.detector import DetectorSpec, build_detector
from learner.model.fusion import MANIFEST_KEY as FUSION_KEY
from learner.model.fusion import Fusion

# the torch-free half (manifest reading) lives in manifest.py; re-exported so callers keep importing it from here
from learner.model.manifest import FORMAT, FORMAT_VERSION, MANIFEST_KEY, BundleError, manifest_taxonomy, read_manifest
from learner.model.shift_guard import ShiftGuard
from learner.model.taxonomy import Taxonomy
from learner.model.title_model import MANIFEST_KEY as TITLE_KEY
from learner.model.title_model import TitleModel, title_digest, title_tensor_names

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_KEY",
    "BundleError",
    "ModelBundle",
    "ShrinkResult",
    "load_bundle",
    "read_manifest",
    "shrink_bundle",
    "store_title_model",
]

# dtypes a bundle's floating-point weights may be stored in; they are cast to float32 when loaded
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ModelBundle:
    model_version: str
    taxonomy: Taxonomy
    classifier: AttributeClassifier
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    detector: torch.nn.Module | None = None
    detector_spec: DetectorSpec | None = None
    created_at: float = field(default_factory=time.time)
    # selective prediction (optional; see learner.evaluation.calibration): single-choice group -> temperature;
    # group -> lowest calibrated confidence auto-filled (> 1: never); how they were fitted (target precision, ECE)
    temperatures: dict[str, float] = field(default_factory=dict)
    autofill_thresholds: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    # the shift guard (learner.model.shift_guard): above its cut-off an image's values are never auto-filled
    shift_guard: ShiftGuard | None = None
    # the title model (learner.model.title_model; tensors `title.*`); None: the bundle reads no titles
    title_model: TitleModel | None = None
    # the fusion of photos and title (learner.model.fusion); None: titles are not read (see product_decision)
    fusion: Fusion | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        return self.classifier.preprocessing

    @property
    def backbone_name(self) -> str:
        return self.classifier.backbone_name

    def threshold(self, group: str, value: str, default: float = 0.5) -> float:
        return self.thresholds.get(group, {}).get(value, default)

    def autofill_threshold(self, group: str) -> float | None:
        """The confidence a value of `group` needs to be auto-filled; None: no threshold, every value is."""
        return self.autofill_thresholds.get(group)

    def manifest(self, tensor_sha256: str) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_version": self.model_version,
            "created_at": self.created_at,
            "taxonomy": self.taxonomy.to_dict(),
            "classifier": {
                "backbone": self.classifier.backbone_name,
                "dropout": float(self.classifier.dropout.p),
                "colour_bins": self.classifier.colour_bins,
                "tap_stages": list(self.classifier.tap_stages),
                "tap_pooling": self.classifier.tap_pooling,
                "heads": {g.name: len(g.values) for g in self.taxonomy.classifier_groups},
            },
            "preprocessing": self.preprocessing.to_dict(),
            "thresholds": self.thresholds,
            "detector": None
            if self.detector_spec is None
            else {**self.detector_spec.to_dict(), "weights_in_bundle": self.detector_spec.weights == "bundle"},
            "metrics": self.metrics,
            "lineage": self.lineage,
            "tensor_sha256": tensor_sha256,
            # optional keys: only in calibrated bundles
            **({"temperatures": self.temperatures} if self.temperatures else {}),
            **({"autofill_thresholds": self.autofill_thresholds} if self.autofill_thresholds else {}),
            **({"calibration": self.calibration} if self.calibration else {}),
            **({"shift_guard": self.shift_guard.to_dict()} if self.shift_guard is not None else {}),
            **({TITLE_KEY: self.title_model.to_manifest()} if self.title_model is not None else {}),
            **({FUSION_KEY: self.fusion.to_dict()} if self.fusion is not None else {}),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors = {f"classifier.{k}": v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()}
        if self.detector is not None and self.detector_spec is not None and self.detector_spec.weights == "bundle":
            tensors.update(
                {f"detector.{k}": v.detach().cpu().contiguous() for k, v in self.detector.state_dict().items()}
            )
        if self.title_model is not None:
            tensors.update({k: torch.from_numpy(v.copy()) for k, v in self.title_model.tensors().items()})
        _write_bundle_file(path, tensors, self.manifest(_tensor_digest(tensors)))
        return path


def load_bundle(path: str | Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    path = Path(path)
    manifest = read_manifest(path)
    taxonomy = manifest_taxonomy(manifest, path)
    tensors = _stored_tensors(path, manifest, "restore the bundle from the registry")
    title_model = _title_model(manifest, {k: tensors[k].numpy() for k in title_tensor_names(tensors)}, taxonomy, path)
    # a shrunk bundle (`shrink_bundle`) stores float16 weights: the modules compute in float32 as always
    tensors = {k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v for k, v in tensors.items()}

    spec = manifest["classifier"]
    classifier = AttributeClassifier(
        taxonomy,
        spec["backbone"],
        pretrained=False,
        dropout=float(spec.get("dropout", 0.2)),
        colour_bins=int(spec.get("colour_bins", 0)),
        tap_stages=tuple(int(i) for i in spec.get("tap_stages", ())),
        tap_pooling=str(spec.get("tap_pooling", "mean")),
    )
    saved_pre = Preprocessing.from_dict(manifest["preprocessing"])
    classifier.preprocessing = saved_pre
    _load_prefixed(classifier, tensors, "classifier.", path)
    classifier.eval()

    detector = None
    detector_spec = None
    if manifest.get("detector"):
        detector_spec = DetectorSpec.from_dict(manifest["detector"])
        detector = build_detector(detector_spec)
        if detector_spec.weights == "bundle":
            _load_prefixed(detector, tensors, "detector.", path)
        detector.eval()

    bundle = ModelBundle(
        model_version=manifest["model_version"],
        taxonomy=taxonomy,
        classifier=classifier,
        thresholds=manifest.get("thresholds", {}),
        metrics=manifest.get("metrics", {}),
        lineage=manifest.get("lineage", {}),
        detector=detector,
        detector_spec=detector_spec,
        created_at=float(manifest.get("created_at", 0.0)),
        temperatures={str(k): float(v) for k, v in (manifest.get("temperatures") or {}).items()},
        autofill_thresholds={str(k): float(v) for k, v in (manifest.get("autofill_thresholds") or {}).items()},
        calibration=dict(manifest.get("calibration") or {}),
        shift_guard=ShiftGuard.from_dict(manifest.get("shift_guard")),
        fusion=Fusion.from_dict(manifest.get(FUSION_KEY)),
    )
    bundle.title_model = title_model
    _check_selective(bundle, path)
    if str(map_location) != "cpu":
        bundle.classifier.to(map_location)
        if bundle.detector is not None:
            bundle.detector.to(map_location)
    return bundle


@dataclass(frozen=True)
class ShrinkResult:
    path: Path
    model_version: str
    dtype: str
    bytes_before: int
    bytes_after: int
    tensors_cast: int


def shrink_bundle(src: str | Path, dst: str | Path, dtype: str = "float16") -> ShrinkResult:
    """Write a copy of the bundle `src` whose floating-point weights are stored as `dtype` (half the size for
    float16), for shipping: `load_bundle` casts them back to float32, so inference, calibration and ONNX export use
    it like any bundle. The manifest is kept (taxonomy, thresholds, calibration, metrics, lineage) except that the
    model version gets a `-fp16`-style suffix (the weights differ in their last bits), `weights_dtype` says how the
    weights are stored, `lineage.shrunk_from` names the original (version and tensor SHA-256), and `tensor_sha256`
    covers the stored tensors. Integer tensors (batch-norm counters) are copied unchanged."""
    src, dst = Path(src), Path(dst)
    if dtype not in STORAGE_DTYPES or dtype == "float32":
        raise BundleError(f"cannot shrink to {dtype!r}: choose one of float16, bfloat16")
    manifest = read_manifest(src)
    if manifest.get("weights_dtype", "float32") != "float32":
        raise BundleError(f"{src} is already shrunk (weights stored as {manifest['weights_dtype']})")
    target = STORAGE_DTYPES[dtype]
    tensors = _stored_tensors(src, manifest)
    title_names = set(title_tensor_names(tensors))
    cast = 0
    for k, v in tensors.items():
        if v.dtype == torch.float32:
            # the title model is read with numpy (BundleInfo), which has no bfloat16: its tensors go to float16
            tensors[k] = v.to(torch.float16 if k in title_names else target).contiguous()
            cast += 1
    if manifest.get(TITLE_KEY):
        stored = {k: tensors[k].numpy() for k in title_names}
        manifest[TITLE_KEY] = {**manifest[TITLE_KEY], "tensor_sha256": title_digest(stored)}
    suffix = {"float16": "fp16", "bfloat16": "bf16"}[dtype]
    manifest["lineage"] = {
        **(manifest.get("lineage") or {}),
        "shrunk_from": {"model_version": manifest["model_version"], "tensor_sha256": manifest["tensor_sha256"]},
    }
    manifest["model_version"] = f"{manifest['model_version']}-{suffix}"
    manifest["weights_dtype"] = dtype
    manifest["tensor_sha256"] = _tensor_digest(tensors)
    _write_bundle_file(dst, tensors, manifest)
    return ShrinkResult(dst, manifest["model_version"], dtype, src.stat().st_size, dst.stat().st_size, cast)


def store_title_model(
    src: str | Path, dst: str | Path, model: TitleModel | None, taxonomy: Taxonomy, fusion: Fusion | None = None
) -> Path:
    """Write a copy of the bundle `src` to `dst` (may be `src`) with `model` as its title model (None: without one),
    `fusion` as its fusion of photos and title (None: without one; a fusion fitted with the earlier title model never
    stays) and `taxonomy` (the bundle's own groups, e.g. with a `title_column` added); every other tensor is copied as
    stored, so a shrunk bundle stays shrunk (the title model's tensors are then stored as float16 as well)."""
    src, dst = Path(src), Path(dst)
    manifest = read_manifest(src)
    tensors = _stored_tensors(src, manifest)
    before = {k: v for k, v in manifest_taxonomy(manifest, src).to_dict().items() if k != "title_column"}
    if {k: v for k, v in taxonomy.to_dict().items() if k != "title_column"} != before:
        raise BundleError(f"{src}: the taxonomy given is not the bundle's (only its title_column may differ)")
    tensors = {k: v for k, v in tensors.items() if k not in set(title_tensor_names(tensors))}
    manifest["taxonomy"] = taxonomy.to_dict()
    manifest.pop(TITLE_KEY, None)
    manifest.pop(FUSION_KEY, None)
    if model is not None:
        try:
            model.check(taxonomy)
        except ValueError as exc:
            raise BundleError(f"the title model does not fit {src}: {exc}") from None
        half = manifest.get("weights_dtype", "float32") != "float32"
        stored = {k: v.astype(np.float16) if half and v.dtype == np.float32 else v for k, v in model.tensors().items()}
        tensors.update({k: torch.from_numpy(np.ascontiguousarray(v).copy()) for k, v in stored.items()})
        manifest[TITLE_KEY] = {**model.to_manifest(), "tensor_sha256": title_digest(stored)}
        if fusion is not None:
            manifest[FUSION_KEY] = fusion.to_dict()
    manifest["tensor_sha256"] = _tensor_digest(tensors)
    _write_bundle_file(dst, tensors, manifest)
    return dst


def _stored_tensors(src: Path, manifest: dict[str, Any], remedy: str = "nothing written") -> dict[str, torch.Tensor]:
    """The bundle's tensors as stored, checked against the manifest's `tensor_sha256` (BundleError when corrupt,
    ending with `remedy`)."""
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(src), framework="pt", device="cpu") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                tensors[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BundleError(f"{src}: tensors are unreadable (truncated or corrupt file): {exc}") from None
    if _tensor_digest(tensors) != manifest.get("tensor_sha256"):
        raise BundleError(f"{src}: checksum mismatch, the weights are corrupt; {remedy}")
    return tensors


def _write_bundle_file(path: Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> None:
    """Tensors and manifest to `path`, atomically: a reader never sees half a bundle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # no sort_keys: the order of groups is meaningful
    save_file(tensors, str(tmp), metadata={MANIFEST_KEY: json.dumps(manifest)})
    tmp.replace(path)


def _check_selective(bundle: ModelBundle, path: Path) -> None:
    single = {g.name for g in bundle.taxonomy.classifier_groups if not g.multi_label}
    for group, t in bundle.temperatures.items():
        if group not in single or not t > 0:
            raise BundleError(f"{path}: temperature {t} of {group!r} is not a positive number of a single-choice group")
    for group in bundle.autofill_thresholds:
        if group not in single:
            raise BundleError(f"{path}: auto-fill threshold for {group!r}, which is not a single-choice group")


def _title_model(
    manifest: dict[str, Any], tensors: dict[str, np.ndarray], taxonomy: Taxonomy, path: Path
) -> TitleModel | None:
    """The bundle's title model from its manifest entry and `title.` tensors as stored; None when it has none."""
    entry = manifest.get(TITLE_KEY)
    if not entry:
        return None
    try:
        model = TitleModel.from_manifest(entry, tensors)
        model.check(taxonomy)
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{path}: the title model is unusable: {exc}") from None
    return model


def _load_prefixed(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BundleError(
            f"{path}: weights do not fit the declared architecture "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
