"""Static int8 against fp32 on onnxruntime: per-group top-1 accuracy on the validation split of a trained bundle.

    .venv/bin/python -m tests.benchmarks.int8_check --model runs/fashion.safetensors
        [--data ../shared/data/fashion-products] [--calibration 256] [--out runs/int8-check]

The bundle is copied to a temporary directory first (the ONNX export is cached beside it). int8 is static QDQ
quantization (`bench_engine.quantize_int8`: onnxruntime.quantization, per-channel int8 weights, uint8 activations)
calibrated on `--calibration` photos of the bundle's *training* split; both models are then scored on the
*validation* split with the bundle's own split rule (the test split is never read). Prints, per group, top-1 of
fp32, of int8, the drop in points and the top-1 agreement between the two, the speed of each, and the verdict of
the adoption rule (int8 only if no group drops more than 0.5 point). Writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
MAX_DROP_POINTS = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a trained bundle (.safetensors)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-products")
    parser.add_argument("--calibration", type=int, default=256, help="training-split photos for calibration")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "int8-check")
    args = parser.parse_args()

    from learner.datasets.labelled import SplitRule, load_labelled_set
    from learner.inference.backends import load_engine
    from learner.inference.engine import TaggingEngine
    from learner.inference.onnx_model import OnnxClassifier
    from tests.benchmarks.bench_engine import quantize_int8

    work = Path(tempfile.mkdtemp(prefix="shelfsight-int8-"))
    bundle_path = work / args.model.name
    shutil.copyfile(args.model, bundle_path)
    fp32 = load_engine(bundle_path, "onnxruntime", device="cpu")  # exports (with its parity check) on first use
    assert isinstance(fp32.classifier, OnnxClassifier)
    split = fp32.bundle.lineage.get("split")
    if not isinstance(split, dict):
        raise SystemExit(f"{args.model} records no split rule in its lineage: cannot tell validation from test")
    rule = SplitRule.from_dict(split)
    taxonomy = fp32.bundle.taxonomy
    labelled = load_labelled_set(args.data, taxonomy)
    key_column = split.get("key_column", labelled.split_column)
    if labelled.split_column != key_column:  # the bundle was trained with photos grouped by another column
        labelled = load_labelled_set(args.data, taxonomy, group_column=key_column)
    train, val = labelled.split(rule, "train"), labelled.split(rule, "val")
    print(f"{len(train)} training photos ({args.calibration} for calibration), {len(val)} validation", file=sys.stderr)

    rng = np.random.default_rng(0)
    chosen = [train[i] for i in rng.choice(len(train), size=min(args.calibration, len(train)), replace=False)]
    calibration = [_prepare(fp32, s.image_path) for s in tqdm(chosen, desc="calibration photos", unit="img")]
    int8_path = quantize_int8(fp32.classifier.path, calibration, work / "classifier.int8.onnx")
    groups = [g.name for g in taxonomy.classifier_groups]
    int8 = TaggingEngine(fp32.bundle, classifier=OnnxClassifier(int8_path, groups, device="cpu"))

    inputs = [_prepare(fp32, s.image_path) for s in tqdm(val, desc="validation photos", unit="img")]
    probs: dict[str, dict[str, np.ndarray]] = {}
    speed: dict[str, float] = {}
    for name, engine in (("fp32", fp32), ("int8", int8)):
        parts: list[dict[str, np.ndarray]] = []
        t0 = time.perf_counter()
        for i in tqdm(range(0, len(inputs), 32), desc=f"{name} on validation", unit="batch"):
            parts.append(engine.classifier.probabilities(inputs[i : i + 32]))
        speed[name] = round(len(inputs) / (time.perf_counter() - t0), 1)
        probs[name] = {g: np.concatenate([p[g] for p in parts]) for g in groups}

    figures: dict[str, dict[str, float]] = {}
    for g in taxonomy.classifier_groups:
        if g.multi_label:
            continue
        rows = [i for i, s in enumerate(val) if isinstance(s.labels.get(g.name), int)]
        truth = np.array([val[i].labels[g.name] for i in rows])
        top_fp32 = probs["fp32"][g.name][rows].argmax(1)
        top_int8 = probs["int8"][g.name][rows].argmax(1)
        acc32, acc8 = float((top_fp32 == truth).mean()), float((top_int8 == truth).mean())
        figures[g.name] = {
            "n": len(rows),
            "top1_fp32": round(100 * acc32, 2),
            "top1_int8": round(100 * acc8, 2),
            "drop_points": round(100 * (acc32 - acc8), 2),
            "agreement": round(100 * float((top_fp32 == top_int8).mean()), 2),
        }
    worst = max(f["drop_points"] for f in figures.values())
    adopt = worst <= MAX_DROP_POINTS
    print(f"{'group':<16}{'n':>6}{'fp32':>8}{'int8':>8}{'drop':>8}{'agree %':>9}")
    for name, f in figures.items():
        print(f"{name:<16}{f['n']:>6}{f['top1_fp32']:>8}{f['top1_int8']:>8}{f['drop_points']:>8}{f['agreement']:>9}")
    print(f"classifier alone, batch 32 on validation: fp32 {speed['fp32']} images/s, int8 {speed['int8']} images/s")
    verdict = "adopt" if adopt else "do not adopt"
    print(f"largest drop {worst:.2f} points (rule: <= {MAX_DROP_POINTS} in every group): {verdict} int8")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"model": str(args.model), "groups": figures, "images_s": speed, "worst_drop": worst, "adopt": adopt}
    (args.out / "int8.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def _prepare(engine: object, path: Path) -> np.ndarray:
    from learner.inference.engine import TaggingEngine

    assert isinstance(engine, TaggingEngine)
    return np.asarray(engine.prepare(path.read_bytes()).classifier_input)


if __name__ == "__main__":
    main()
