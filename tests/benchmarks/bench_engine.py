"""Benchmark: the model's forward pass alone vs the tagging engine from JPEG bytes, batch 1 and 32.

    .venv/bin/python -m tests.benchmarks.bench_engine [--model BUNDLE] [--images DIR] [--n 128]

Without --model it builds an untrained bundle of the same architecture (speed does not depend on the
weights). Images default to ../shared/data/fashion-products (224x224 catalog photos) when present, else
the CC0 photos in deploy/demo. Prints images/s for (a) forward only (pre-normalised tensors already in
the model's layout) and (b) `TaggingEngine.tag_bytes` (decode + EXIF + resize + normalise + forward +
post-processing), side by side in one run, and the ratio (b)/(a); then (c) the engine at batch 32 with
`tta="flip"` (image and mirror image averaged) and its cost against (b). Absolute figures are only meaningful
on the machine that printed them; compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]


def default_images() -> Path:
    shared = ROOT.parent / "shared" / "data" / "fashion-products" / "images"
    return shared if shared.is_dir() else ROOT / "deploy" / "demo" / "clothing-cc0" / "images"


def build_untrained(backbone: str) -> Path:
    from learner.model.bundle import ModelBundle
    from learner.model.classifier import AttributeClassifier
    from learner.model.taxonomy import load_taxonomy

    taxonomy = load_taxonomy("fashion-products")
    path = Path("/tmp/shelfsight-bench-untrained.safetensors")
    ModelBundle("bench-untrained", taxonomy, AttributeClassifier(taxonomy, backbone, pretrained=False)).save(path)
    return path


def timed(fn, n_images: int, repeats: int, desc: str) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up (allocations, kernels)
    best = float("inf")
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return n_images / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--images", type=Path, default=default_images())
    parser.add_argument("--n", type=int, default=128, help="images per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from learner.inference.engine import TaggingEngine
    from learner.inference.imaging import normalize
    from learner.model.bundle import load_bundle

    bundle = load_bundle(args.model or build_untrained(args.backbone))
    engine = TaggingEngine(bundle, device=args.device)
    files = sorted(args.images.glob("*.jpg"))[: args.n]
    payloads = [f.read_bytes() for f in files]
    n = len(payloads)
    prepared = [engine.prepare(b) for b in payloads]
    inputs = normalize(torch.stack([p.classifier_input for p in prepared]), engine.pre).to(engine.device)

    figures: dict[str, float | int | str] = {
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "images": n,
        "backbone": bundle.classifier.backbone_name,
    }
    model = engine.classifier
    for batch in (1, 32):

        @torch.inference_mode()
        def forward_only(batch: int = batch) -> None:
            for i in range(0, n, batch):
                model(inputs[i : i + batch])

        def engine_from_bytes(batch: int = batch) -> None:
            engine.tag_bytes(payloads, batch_size=batch)

        fwd = timed(forward_only, n, args.repeats, f"forward b{batch}")
        eng = timed(engine_from_bytes, n, args.repeats, f"engine  b{batch}")
        figures[f"forward_b{batch}_img_s"] = round(fwd, 2)
        figures[f"engine_b{batch}_img_s"] = round(eng, 2)
        figures[f"ratio_b{batch}"] = round(eng / fwd, 3)

    flip = TaggingEngine(bundle, device=args.device, tta="flip")
    tta = timed(lambda: flip.tag_bytes(payloads, batch_size=32), n, args.repeats, "engine  b32 tta=flip")
    figures["engine_tta_flip_b32_img_s"] = round(tta, 2)
    figures["tta_flip_cost_b32"] = round(figures["engine_b32_img_s"] / tta, 3)  # type: ignore[operator]

    print(f"tagging engine benchmark on {figures['device']} ({figures['threads']} threads), {n} images")
    print(f"{'batch':>5}  {'forward img/s':>14}  {'engine img/s':>13}  {'engine/forward':>14}")
    for batch in (1, 32):
        print(
            f"{batch:>5}  {figures[f'forward_b{batch}_img_s']:>14}  {figures[f'engine_b{batch}_img_s']:>13}"
            f"  {figures[f'ratio_b{batch}']:>14}"
        )
    print(f"tta=flip, batch 32: {tta:.2f} img/s, {figures['tta_flip_cost_b32']}x the time of the plain engine")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
