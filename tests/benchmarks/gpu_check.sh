#!/usr/bin/env bash
# GPU check (< 5 min on one GPU): bare forward vs the engine from JPEG bytes vs end to end through the local
# source, bf16 autocast, batch 256, 224 px; prints images/s and the ratios to the bare forward.
#
#     bash tests/benchmarks/gpu_check.sh [--model BUNDLE] [--images DIR] [--n 4096]
#
# Without a CUDA GPU it refuses (exit 2) and measures nothing: CPU figures come from bench_engine.py.
# Without --model it builds an untrained EfficientNet-Lite0 bundle (throughput only; it says so).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: refused: no CUDA GPU visible to torch (torch.cuda.is_available() is False)." >&2
    echo "  It measures GPU throughput only and would print meaningless CPU figures; on CPU run" >&2
    echo "  .venv/bin/python -m tests.benchmarks.bench_engine instead." >&2
    exit 2
fi
exec timeout 290 "$PY" -m tests.benchmarks.gpu_check "$@"
