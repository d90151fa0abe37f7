"""Export a bundle's classifier to ONNX for the onnxruntime backend, refusing an export that disagrees with torch.

The exported graph is the whole serving classifier: uint8 images (N x S x S x 3, the layout Pillow decodes to) in,
per attribute group the probabilities (`prob.<group>`, softmax or sigmoid as the torch classifier gives them) and
the raw logits (`logits.<group>`) out. Scaling and normalisation are inside the graph, so the serving path does no
float work in numpy. The batch dimension is dynamic; opset 18. The ONNX file's metadata names the bundle's
SHA-256, its model version and the export format, so a stale or foreign file is never served.

Parity: before the file is written, torch and onnxruntime run the same photos (the caller's, else synthetic
ones); if any group's largest probability difference exceeds `max_abs_diff` or its top-1 agreement falls below
`min_top1_agreement`, the export is refused with the figures (`ParityError`).

Run as a module (`python -m learner.inference.onnx_export BUNDLE OUT`) it is the subprocess in which a torch-free
daemon has its missing ONNX file made. This module imports torch: import it lazily, never from the serving path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from learner.inference.imaging import ImageDecodeError, decode_image, letterbox, pil_to_uint8_array
from learner.inference.onnx_model import EXPORT_FORMAT, META_BUNDLE_SHA256, META_FORMAT, META_MODEL_VERSION
from learner.model.bundle import ModelBundle, load_bundle
from learner.model.classifier import AttributeClassifier
from learner.model.manifest import file_sha256
from learner.model.preprocessing import Preprocessing

log = logging.getLogger("shelfsight.export")

OPSET = 18
DEFAULT_MAX_ABS_DIFF = 1e-3
DEFAULT_MIN_TOP1_AGREEMENT = 0.999


class ParityError(RuntimeError):
    """The exported graph does not give the torch classifier's answers; `report` holds the figures."""

    def __init__(self, report: ParityReport) -> None:
        self.report = report
        failing = ", ".join(
            f"{g}: max |dp| {r.max_abs_diff:.2e}, top-1 agreement {r.top1_agreement:.2%}"
            for g, r in report.groups.items()
            if not r.ok
        )
        super().__init__(
            f"ONNX export refused: it disagrees with the torch classifier on {report.images} images "
            f"(limits: max |dp| <= {report.max_abs_diff:g}, top-1 agreement >= {report.min_top1_agreement:.1%}); "
            f"{failing}"
        )


@dataclass
class GroupParity:
    max_abs_diff: float
    top1_agreement: float
    ok: bool


@dataclass
class ParityReport:
    images: int
    source: str  # "photos" or "synthetic"
    max_abs_diff: float
    min_top1_agreement: float
    groups: dict[str, GroupParity] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(g.ok for g in self.groups.values())

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"ok": self.ok}


class ServingGraph(nn.Module):
    """uint8 NHWC images -> (probabilities per group..., logits per group...), as the engine serves them."""

    def __init__(self, classifier: AttributeClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        pre = classifier.preprocessing
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.groups = [g.name for g in classifier.taxonomy.classifier_groups]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the same arithmetic as learner.inference.imaging.normalize, in the same order
        x = images.permute(0, 3, 1, 2).float().div(255.0)
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        x = x.sub(mean).div(std)
        logits = self.classifier(x)
        probs = self.classifier.probabilities(logits)
        return tuple(probs[g] for g in self.groups) + tuple(logits[g].float() for g in self.groups)


@dataclass
class ExportResult:
    path: Path
    bundle_sha256: str
    model_version: str
    parity: ParityReport
    seconds: float


def export_onnx(
    bundle_path: str | Path,
    out: str | Path,
    photos: Sequence[bytes] = (),
    *,
    synthetic: int = 16,
    max_abs_diff: float = DEFAULT_MAX_ABS_DIFF,
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT,
    bundle: ModelBundle | None = None,
) -> ExportResult:
    """Export the bundle's classifier to `out` after a parity check on `photos` (else `synthetic` random images).

    `bundle` lets a caller pass the loaded bundle (tests); it must be the one at `bundle_path`.
    Raises ParityError (nothing written) when the exported graph disagrees with torch.
    """
    t0 = time.perf_counter()
    bundle_path, out = Path(bundle_path), Path(out)
    sha = file_sha256(bundle_path)
    bundle = bundle or load_bundle(bundle_path)
    graph = ServingGraph(bundle.classifier.float().eval()).eval()
    groups = graph.groups
    size = bundle.preprocessing.input_size
    batch = torch.export.Dim("batch", min=1, max=65536)
    example = torch.full((2, size, size, 3), bundle.preprocessing.pad_value, dtype=torch.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # two exporters at once never share a file
    program = torch.onnx.export(
        graph,
        (example,),
        dynamo=True,
        opset_version=OPSET,
        input_names=["images"],
        output_names=[f"prob.{g}" for g in groups] + [f"logits.{g}" for g in groups],
        dynamic_shapes={"images": {0: batch}},
        external_data=False,
        verbose=False,
    )
    assert program is not None
    model = program.model_proto
    for key, value in {
        META_BUNDLE_SHA256: sha,
        META_MODEL_VERSION: bundle.model_version,
        META_FORMAT: EXPORT_FORMAT,
        "shelfsight.groups": json.dumps(groups),
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    tmp.write_bytes(model.SerializeToString())
    try:
        inputs, source = _parity_inputs(photos, bundle.preprocessing, synthetic)
        report = check_parity(graph, tmp, inputs, source, max_abs_diff, min_top1_agreement)
        if not report.ok:
            raise ParityError(report)
        tmp.replace(out)  # atomic: a reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, sha, bundle.model_version, report, time.perf_counter() - t0)


def _parity_inputs(photos: Sequence[bytes], pre: Preprocessing, synthetic: int) -> tuple[np.ndarray, str]:
    arrays = []
    for data in photos:
        try:
            img = decode_image(data, draft_size=pre.input_size * 2)
        except ImageDecodeError:
            continue
        arrays.append(pil_to_uint8_array(letterbox(img, pre)))
    if arrays:
        return np.stack(arrays), "photos"
    rng = np.random.default_rng(0)
    size = pre.input_size
    images = rng.integers(0, 256, size=(max(1, synthetic), size, size, 3), dtype=np.uint8)
    images[::2, : size // 4] = pre.pad_value  # some letterbox-like padding, as catalog photos have
    return images, "synthetic"


def check_parity(
    graph: ServingGraph,
    onnx_path: Path,
    images: np.ndarray,
    source: str,
    max_abs_diff: float = DEFAULT_MAX_ABS_DIFF,
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT,
    batch_size: int = 32,
) -> ParityReport:
    """Run torch and onnxruntime on the same uint8 NHWC images and compare the probabilities per group."""
    from learner.inference.onnx_model import OnnxClassifier

    runner = OnnxClassifier(onnx_path, graph.groups, expect_sha256=None)
    diffs = {g: 0.0 for g in graph.groups}
    agree = {g: 0 for g in graph.groups}
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        with torch.inference_mode():
            ref = graph(torch.from_numpy(np.ascontiguousarray(chunk)))
        got = runner.probabilities(list(chunk))
        for i, g in enumerate(graph.groups):
            r = ref[i].numpy()
            diffs[g] = max(diffs[g], float(np.abs(r - got[g]).max()))
            agree[g] += int((r.argmax(1) == got[g].argmax(1)).sum())
    report = ParityReport(len(images), source, max_abs_diff, min_top1_agreement)
    for g in graph.groups:
        share = agree[g] / max(1, len(images))
        report.groups[g] = GroupParity(diffs[g], share, diffs[g] <= max_abs_diff and share >= min_top1_agreement)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m learner.inference.onnx_export BUNDLE OUT [--images DIR --n N]`: the export subprocess."""
    parser = argparse.ArgumentParser(prog="python -m learner.inference.onnx_export", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=Path, help="a directory of photos for the parity check")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    photos = [p.read_bytes() for p in sorted(args.images.glob("*.jpg"))[: args.n]] if args.images else []
    try:
        result = export_onnx(args.bundle, args.out, photos)
    except ParityError as exc:
        print(json.dumps({"error": str(exc), "parity": exc.report.to_dict()}), file=sys.stderr)
        return 3
    print(json.dumps({"path": str(result.path), "parity": result.parity.to_dict(), "seconds": result.seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
