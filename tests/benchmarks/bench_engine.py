"""Benchmark: the inference backends side by side in ONE run, from prepared inputs and from JPEG bytes.

    .venv/bin/python -m tests.benchmarks.bench_engine [--model BUNDLE] [--n 128] [--n-full 48] [--int8]
        [--out runs/bench-engine]

Variants (each a real `TaggingEngine`, same bundle):
- `torch eager`: the torch backend without channels_last (plain NCHW eager PyTorch);
- `torch channels_last`: the torch backend as it serves (the default backend);
- `onnxruntime fp32`: the onnxruntime backend (the bundle's ONNX export, made beside the bundle if missing);
- `onnxruntime fp32 tta`: the same, serving with test-time augmentation (`tta="flip"`: each photo and its mirror
  image, probabilities averaged); its `engine` figures are what TTA costs (its `model` figures are the plain model's);
- `openvino fp32`: the same ONNX file compiled by OpenVINO, when `openvino` is installed (measured, not served);
- `onnxruntime int8` (--int8): static QDQ quantization (onnxruntime.quantization) calibrated on other photos;
  the run prints its agreement with fp32 on the measured photos (accuracy needs a trained bundle: see --int8).
Per variant: images/s of the model alone on prepared uint8 inputs (`model`), of `tag_bytes` from JPEG bytes
(decode + EXIF + resize + model + post-processing) on the 224 px set at batch 1 and 32, and on the full-size set
(~1800x2400) at batch 32; the engine's images per CPU-second of its process (`cpu engine b32 224px`, steadier
than wall time when other jobs share the machine); plus decode+resize alone per set. Repeats are interleaved
across variants (best of --repeats), so the ratios are fair on a shared machine. Ratios are against
`torch channels_last`.

Without --model it builds a bundle with ImageNet EfficientNet-Lite0 features and randomly initialised heads over
the fashion-products taxonomy (says so in the output): throughput does not depend on the head weights.
Absolute figures are only meaningful on the machine that printed them; compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from learner.inference.engine import TaggingEngine

ROOT = Path(__file__).resolve().parents[2]
# the shared data sit beside the main checkout (../shared) or above the worktrees (../../shared)
SHARED = next(
    (p / "shared" / "data" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared" / "data").is_dir()), ROOT
)


def default_images() -> Path:
    shared = SHARED / "fashion-products" / "images"
    return shared if shared.is_dir() else ROOT / "deploy" / "demo" / "clothing-cc0" / "images"


def default_full_images() -> Path | None:
    full = SHARED / "fashion-products-fullsize" / "images"
    return full if full.is_dir() else None


def build_untrained(backbone: str, pretrained: bool = True) -> Path:
    """A bundle with the fashion-products taxonomy and untrained heads (throughput only; outputs are meaningless)."""
    import torch

    from learner.model.bundle import ModelBundle
    from learner.model.classifier import AttributeClassifier
    from learner.model.taxonomy import load_taxonomy

    torch.manual_seed(0)
    taxonomy = load_taxonomy("fashion-products")
    path = Path(f"/tmp/shelfsight-bench-untrained-{backbone}.safetensors")
    model = AttributeClassifier(taxonomy, backbone, pretrained=pretrained)
    bundle = ModelBundle("bench-untrained", taxonomy, model, lineage={"note": "untrained heads, benchmark only"})
    bundle.created_at = 0.0  # same bytes every run: the ONNX export beside it is reused
    return bundle.save(path)


class OpenVinoClassifier:
    """The bundle's ONNX graph compiled by OpenVINO for CPU, behind the engine's `ClassifierRunner` seam."""

    name = "openvino"
    device = "cpu"

    def __init__(self, onnx_path: Path, groups: Sequence[str]) -> None:
        import openvino as ov

        # f32 explicitly: on CPUs with bf16/fp16 support OpenVINO would otherwise lower the precision by itself
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = ov.Core().compile_model(str(onnx_path), "CPU", config)
        self.groups = list(groups)
        self.request = self.compiled.create_infer_request()

    def to_input(self, image: np.ndarray) -> np.ndarray:
        return image

    def mirror(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:, ::-1])

    def probabilities(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        out = self.request.infer({0: np.stack(inputs)})
        by_name = {k.get_any_name(): v for k, v in out.items()}
        return {g: np.asarray(by_name[f"prob.{g}"], dtype=np.float32) for g in self.groups}


def quantize_int8(onnx_path: Path, calibration: list[np.ndarray], out: Path) -> Path:
    """Static int8 (QDQ, per-channel weights) calibrated on `calibration` (uint8 S x S x 3 photos)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"images": np.stack(calibration[i : i + 8])} for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    prepped = out.with_suffix(".pre.onnx")
    quant_pre_process(str(onnx_path), str(prepped), skip_symbolic_shape=True)
    quantize_static(
        str(prepped),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepped.unlink(missing_ok=True)
    return out


VARIANTS = (
    "torch eager",
    "torch channels_last",
    "onnxruntime fp32",
    "onnxruntime fp32 tta",
    "openvino fp32",
    "onnxruntime int8",
)
BASELINE = "torch channels_last"


def build_variant(name: str, model: Path, device: str, int8_path: Path | None) -> TaggingEngine:
    from learner.inference.backends import load_engine
    from learner.inference.engine import TaggingEngine
    from learner.inference.onnx_model import OnnxClassifier

    if name == "torch eager":
        from learner.inference.torch_runner import TorchClassifier
        from learner.model.bundle import load_bundle

        bundle = load_bundle(model)
        return TaggingEngine(bundle, classifier=TorchClassifier(bundle.classifier, device=device, channels_last=False))
    if name == "torch channels_last":
        return load_engine(model, "torch", device=device)
    if name == "onnxruntime fp32 tta":  # test-time augmentation: each photo and its mirror image, averaged
        return load_engine(model, "onnxruntime", device=device, tta="flip")
    ort = load_engine(model, "onnxruntime", device=device)
    assert isinstance(ort.classifier, OnnxClassifier)
    groups = [g.name for g in ort.bundle.taxonomy.classifier_groups]
    if name == "onnxruntime fp32":
        return ort
    if name == "openvino fp32":
        return TaggingEngine(ort.bundle, classifier=OpenVinoClassifier(ort.classifier.path, groups))
    assert name == "onnxruntime int8" and int8_path is not None
    return TaggingEngine(ort.bundle, classifier=OnnxClassifier(int8_path, groups, device=device))


def best_rate(fn: Callable[[], object], n_images: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - t0)


def measure(engine: TaggingEngine, payloads: list[bytes], full: list[bytes]) -> dict[str, float]:
    """One pass of every measurement for one variant (the caller takes the best over interleaved repeats).

    Also `cpu engine b32 224px`: images per CPU-second of this process, which other load on a shared machine
    disturbs far less than wall time (a runtime's busy-waiting counts against it)."""
    engine.tag_bytes(payloads[:32], batch_size=32)  # warm-up
    inputs = [engine.prepare(b).classifier_input for b in payloads]
    rates: dict[str, float] = {}
    cpu0 = time.process_time()
    engine.tag_bytes(payloads, batch_size=32)
    rates["cpu engine b32 224px"] = len(payloads) / max(time.process_time() - cpu0, 1e-9)
    for batch in (1, 32):
        rates[f"model b{batch}"] = best_rate(
            lambda b=batch: [engine.classifier.probabilities(inputs[i : i + b]) for i in range(0, len(inputs), b)],
            len(inputs),
        )
        rates[f"engine b{batch} 224px"] = best_rate(
            lambda b=batch: engine.tag_bytes(payloads, batch_size=b), len(payloads)
        )
    if full:
        rates["engine b32 full-size"] = best_rate(lambda: engine.tag_bytes(full, batch_size=32), len(full))
    return rates


def worker(args: argparse.Namespace) -> None:
    """One variant in a fresh process: thread pools of different runtimes never compete inside one process."""
    payloads, full = _payloads(args)
    engine = build_variant(args.worker, args.model, args.device, args.int8_path)
    rates = measure(engine, payloads, full)
    probs = engine.classifier.probabilities([engine.prepare(b).classifier_input for b in payloads])
    np.savez(args.result.with_suffix(".npz"), **probs)
    args.result.write_text(json.dumps(rates))


def _payloads(args: argparse.Namespace) -> tuple[list[bytes], list[bytes]]:
    payloads = [f.read_bytes() for f in sorted(args.images.glob("*.jpg"))[: args.n]]
    full = [f.read_bytes() for f in sorted(args.full_images.glob("*.jpg"))[: args.n_full]] if args.full_images else []
    return payloads, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--images", type=Path, default=default_images())
    parser.add_argument("--full-images", type=Path, default=default_full_images())
    parser.add_argument("--n", type=int, default=128, help="224 px images per measurement")
    parser.add_argument("--n-full", type=int, default=48, help="full-size images per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--int8", action="store_true", help="also quantize to int8 and measure it")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-engine")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--int8-path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    model = args.model
    if model is None:
        model = build_untrained(args.backbone)
        print(f"no --model: built {model} (ImageNet {args.backbone} features, UNTRAINED heads) for throughput only")
    payloads, full = _payloads(args)
    from learner.inference.backends import load_engine

    ort = load_engine(model, "onnxruntime", device=args.device)  # exports the bundle beside it when missing
    variants = [v for v in VARIANTS if v != "openvino fp32" or _has("openvino")]
    int8_path = None
    if args.int8:
        from learner.inference.onnx_model import OnnxClassifier

        assert isinstance(ort.classifier, OnnxClassifier)
        calibration = [f.read_bytes() for f in sorted(args.images.glob("*.jpg"))[args.n : args.n + 64]]
        photos = [np.asarray(ort.prepare(b).classifier_input) for b in calibration]  # other photos than measured
        int8_path = quantize_int8(ort.classifier.path, photos, Path("/tmp") / f"{ort.classifier.path.stem}.int8.onnx")
    else:
        variants.remove("onnxruntime int8")
    decode = {"224px": max(best_rate(lambda: [ort.prepare(b) for b in payloads], len(payloads)) for _ in range(3))}
    if full:
        decode["full-size"] = max(best_rate(lambda: [ort.prepare(b) for b in full], len(full)) for _ in range(3))

    rates: dict[str, dict[str, float]] = {v: {} for v in variants}
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    for r in range(args.repeats):
        for v in variants:  # interleaved: each repeat runs every variant once, in its own process
            result = work / f"{v.replace(' ', '_')}.json"
            command = [sys.executable, "-m", "tests.benchmarks.bench_engine", "--worker", v, "--model", str(model)]
            command += ["--images", str(args.images), "--n", str(args.n), "--device", args.device]
            command += ["--n-full", str(args.n_full if full else 0), "--result", str(result)]
            if args.full_images:
                command += ["--full-images", str(args.full_images)]
            if int8_path is not None:
                command += ["--int8-path", str(int8_path)]
            subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            for label, rate in json.loads(result.read_text()).items():
                rates[v][label] = max(rates[v].get(label, 0.0), rate)
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
    agreement = _agreement(work, variants)

    base = rates[BASELINE]
    labels = list(base)
    print(
        f"\ninference backends on {args.device} ({os.cpu_count()} cores), {len(payloads)} photos at 224 px"
        f" ({args.images}), {len(full)} full-size; images/s, best of {args.repeats} interleaved repeats,"
        f" ratio to {BASELINE}"
    )
    print(f"{'variant':<22}" + "".join(f"{label:>24}" for label in labels))
    for name in variants:
        print(
            f"{name:<22}" + "".join(f"{rates[name][lb]:>15.1f} ({rates[name][lb] / base[lb]:>5.2f}x)" for lb in labels)
        )
    shown = ", ".join(f"{k} {v:.0f} img/s" for k, v in decode.items())
    print(f"decode+resize alone, one thread (Pillow, JPEG draft): {shown}")
    for name, a in agreement.items():
        print(
            f"{name} vs {BASELINE}: max |dp| {a['max_abs_diff']:.1e},"
            f" top-1 agreement (worst group) {a['top1_agreement']:.2%}"
        )
    figures = {
        "model": str(model),
        "untrained_heads": args.model is None,
        "device": args.device,
        "images_224": len(payloads),
        "images_full": len(full),
        "rates_img_s": rates,
        "ratio_vs_torch_channels_last": {n: {lb: rates[n][lb] / base[lb] for lb in labels} for n in variants},
        "decode_img_s": decode,
        "agreement": agreement,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2))
    _plot(rates, labels, args.out / "bench-engine.png")
    print(f"written {args.out / 'figures.json'} and {args.out / 'bench-engine.png'}", file=sys.stderr)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _agreement(work: Path, variants: list[str]) -> dict[str, dict[str, float]]:
    """Each variant's probabilities on the measured photos against the torch engine's."""
    ref = np.load(work / f"{BASELINE.replace(' ', '_')}.npz")
    out = {}
    for name in variants:
        if name == BASELINE:
            continue
        got = np.load(work / f"{name.replace(' ', '_')}.npz")
        out[name] = {
            "max_abs_diff": max(float(np.abs(ref[g] - got[g]).max()) for g in ref.files),
            "top1_agreement": min(float((ref[g].argmax(1) == got[g].argmax(1)).mean()) for g in ref.files),
        }
    return out


def _plot(rates: dict[str, dict[str, float]], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(rates)
    for i, (name, by_label) in enumerate(rates.items()):
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, [by_label[lb] for lb in labels], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels)
    ax.set_ylabel("images / s")
    ax.set_title("inference backends, same bundle, same run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
