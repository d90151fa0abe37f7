"""The inference backend seam: which runtime executes the classifier, and building an engine with it.

- `torch`: the bundle's PyTorch classifier (`learner.inference.torch_runner`), on CPU or CUDA (AMP);
- `onnxruntime`: the bundle's classifier exported to ONNX (`learner.inference.onnx_model`), CPU, or CUDA when
  onnxruntime's CUDA provider is installed. This path never imports torch, unless the bundle has a detector:
  the detector always runs on torch.

`load_engine` is the one place that turns (bundle file, backend name) into a `TaggingEngine`; the daemon and the
CLI call it with their configuration. Must not read configuration itself, or import torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from learner.inference.engine import TaggingEngine

Backend = Literal["torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = get_args(Backend)


def check_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown inference backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name  # type: ignore[return-value]


def load_engine(
    bundle_path: str | Path,
    backend: str = "torch",
    *,
    device: str = "auto",
    max_pixels: int | None = None,
    top_k: int = 3,
    amp: bool = True,
    onnx_cache_dir: Path | None = None,
    threads: int | None = None,
    tta: str | None = None,
) -> TaggingEngine:
    """A tagging engine for the bundle at `bundle_path` on `backend`.

    onnxruntime: the ONNX file beside the bundle (keyed by the bundle's SHA-256) is used, or exported first in a
    subprocess when missing. Raises `BundleError` when the bundle or its export cannot be used.
    """
    from learner.inference.engine import TaggingEngine
    from learner.inference.imaging import DEFAULT_MAX_PIXELS

    bundle_path = Path(bundle_path)
    pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if check_backend(backend) == "torch":
        from learner.model.bundle import load_bundle

        return TaggingEngine(load_bundle(bundle_path), device=device, max_pixels=pixels, top_k=top_k, amp=amp, tta=tta)

    from learner.inference.onnx_model import OnnxClassifier, ensure_onnx
    from learner.model.manifest import BundleInfo, file_sha256

    info = BundleInfo.read(bundle_path)
    sha = file_sha256(bundle_path)
    onnx_path = ensure_onnx(bundle_path, sha, onnx_cache_dir)
    groups = [g.name for g in info.taxonomy.classifier_groups]
    single = [g.name for g in info.taxonomy.classifier_groups if not g.multi_label]
    runner = OnnxClassifier(onnx_path, groups, device=device, threads=threads, expect_sha256=sha, score_groups=single)
    detector = None
    if info.detector:  # the detector stays on torch
        from learner.inference.torch_runner import pick_device
        from learner.model.bundle import load_bundle

        full = load_bundle(bundle_path)
        if full.detector is not None and full.detector_spec is not None:
            detector = (full.detector.to(pick_device(device)).eval(), full.detector_spec)
    return TaggingEngine(
        info, device=device, max_pixels=pixels, top_k=top_k, amp=amp, tta=tta, classifier=runner, detector=detector
    )
