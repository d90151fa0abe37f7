#!/usr/bin/env bash
# Distillation check (issue 28; GPU only, about 8 minutes on one H100): the documented recipe three ways on the same
# data and seed, side by side on the validation split:
#   lite0            EfficientNet-Lite0 alone (what serves)
#   lite2            EfficientNet-Lite2 alone (the teacher; 260 px)
#   lite0-distilled  Lite0 taught by that Lite2 (`shelfsight train --teacher`, learner/training/distillation.py)
# then each one's forward-pass images/s on this GPU (bf16, batch 256, its own input size). Photos only (--no-title):
# the title model does not depend on the image backbone. The test split is never read.
#
#     bash tests/benchmarks/distil_check.sh [OUT_DIR]     (default runs/distil-check)
#     DATA=../shared/data/fashion-products SOURCES="--data ../shared/data/fashion-products-more" WEIGHT=0.5 T=2 ...
#
# Writes OUT_DIR/{lite0,lite2,lite0-distilled}.safetensors and .log, and distil-check.json; prints the table.
# Without a CUDA GPU it refuses (exit 2): on two CPU cores the Lite2 teacher alone would take hours.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "distil_check: refused: no CUDA GPU visible to torch; it trains three models and needs one." >&2
    exit 2
fi
OUT="${1:-runs/distil-check}"
DATA="${DATA:-../shared/data/fashion-products}"
read -r -a SOURCES <<< "${SOURCES:-}"
RECIPE=(--taxonomy fashion-products --epochs 12 --class-weight-power 0 --brightness 0 --contrast 0 --seed 1
    --no-test --no-title --no-progress)
mkdir -p "$OUT"

train() {  # name, then the run's own flags
    local name=$1
    shift
    echo "== $name: shelfsight train --data $DATA ${SOURCES[*]} ${RECIPE[*]} $* (log: $OUT/$name.log)"
    local started=$SECONDS
    timeout 420 .venv/bin/shelfsight train --data "$DATA" "${SOURCES[@]}" "${RECIPE[@]}" "$@" \
        --out "$OUT/$name.safetensors" > "$OUT/$name.log" 2>&1 || { tail -20 "$OUT/$name.log"; exit 1; }
    echo "   done in $((SECONDS - started)) s"
}

train lite2 --backbone tf_efficientnet_lite2
train lite0 --backbone tf_efficientnet_lite0
train lite0-distilled --backbone tf_efficientnet_lite0 --teacher "$OUT/lite2.safetensors" \
    --distil-weight "${WEIGHT:-0.5}" --distil-temperature "${T:-2}"

"$PY" - "$OUT" <<'PY'
import json, sys, time
from pathlib import Path

import torch

from learner.model.bundle import load_bundle

out = Path(sys.argv[1])
rows = {}
for name in ("lite0", "lite2", "lite0-distilled"):
    bundle = load_bundle(out / f"{name}.safetensors")
    model = bundle.classifier.cuda().eval().to(memory_format=torch.channels_last)
    side = model.preprocessing.input_size
    x = torch.randn(256, 3, side, side, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(5):
            model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(30):
            model(x)
        torch.cuda.synchronize()
    groups = bundle.metrics["validation"]["groups"]
    rows[name] = {
        "backbone": model.backbone_name,
        "input_size": side,
        "val_top1": {g: m["top1"] for g, m in groups.items() if m.get("top1") is not None},
        "val_mean_top1": bundle.metrics["validation"]["summary"]["mean_top1"],
        "gpu_images_per_s": 256 * 30 / (time.perf_counter() - start),
        "best_epoch": bundle.lineage.get("best_epoch"),
        "teacher": bundle.lineage.get("teacher"),
    }
(out / "distil-check.json").write_text(json.dumps(rows, indent=2))
groups = list(rows["lite0"]["val_top1"])
print(f"\n{'model':16s} {'img/s':>8s} {'mean':>6s} " + " ".join(f"{g[:11]:>11s}" for g in groups))
for name, r in rows.items():
    tops = " ".join(f"{r['val_top1'].get(g, float('nan')):11.3f}" for g in groups)
    print(f"{name:16s} {r['gpu_images_per_s']:8.0f} {r['val_mean_top1']:6.3f} {tops}")
print(f"\nwrote {out / 'distil-check.json'} (validation split; GPU forward pass, bf16, batch 256)")
PY
