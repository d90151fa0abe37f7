#!/usr/bin/env bash
# Rebuilds the starter model that `shelfsight demo` and `shelfsight tag` use out of the box:
#   deploy/demo/starter.safetensors      the bundle (EfficientNet-Lite0, all attribute groups of the fashion-products
#                                        taxonomy, a title model of the product titles and the learned fusion of
#                                        photos and title, calibrated on the validation split, weights as float16)
#   deploy/demo/starter.manifest.json    what it is: data set and its labels.csv SHA-256, recipe, validation
#                                        figures, bundle SHA-256 and size, the command that made it
# Needs ../shared/data/fashion-products (DATA=... to point elsewhere). Training takes about 28 minutes on two quiet CPU
# cores (it calibrates on the validation split: temperatures, auto-fill thresholds, the shift guard's cut-off);
# FROM=path/to/bundle.safetensors skips it and recalibrates an existing bundle of the same recipe instead (float32, or
# the shipped float16 starter itself: FROM=deploy/demo/starter.safetensors; a title model is trained first when it
# has none), then shrinks it.
# SOURCES="--data ../shared/data/fashion-products-more --low-res-data ../shared/data/fashion-products-thumbs" also
# trains on those folders (the multi-folder recipe of docs/model-card.md, "All three folders in one run"; 49 minutes
# on two CPU cores on a fast day, about 84 at the slowest speed this machine was measured at); the manifest records
# every folder read.
# The test split is never read (--no-test): the figures in the manifest are validation figures.
# tests/deploy/test_starter_bundle.py checks the committed files.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA="${DATA:-../shared/data/fashion-products}"
OUT_DIR="${OUT_DIR:-deploy/demo}"
WORK="${WORK:-runs/starter}"
FROM="${FROM:-}"
read -r -a SOURCES <<< "${SOURCES:-}"
# The documented recipe (README "Model", docs/model-card.md): the ONE place its flags are written down. With
# SOURCES (the multi-folder recipe) 10 epochs: 7 that also draw a quarter of the thumbnails, then 3 serving-only
# passes over the 224/300 px photos (docs/model-card.md, "All three folders in one run").
EPOCHS=12
[ -n "${SOURCES[*]}" ] && EPOCHS=10
RECIPE=(--taxonomy fashion-products --backbone tf_efficientnet_lite0 --epochs "$EPOCHS" --class-weight-power 0
    --brightness 0 --contrast 0 --seed 1 --no-test)

mkdir -p "$WORK" "$OUT_DIR"
if [ -z "$FROM" ]; then
    if [ ! -f "$DATA/labels.csv" ]; then
        echo "no labelled set at $DATA (labels.csv + images/): set DATA=... or put ../shared beside the checkout" >&2
        exit 2
    fi
    FROM="$WORK/starter-fp32.safetensors"
    # the manifest records the command that rebuilds the starter (never this machine's output paths), then what it ran
    REBUILD="bash deploy/demo/build_starter.sh"
    [ -n "${SOURCES[*]}" ] && REBUILD="SOURCES=\"${SOURCES[*]}\" $REBUILD"
    [ "$DATA" != "../shared/data/fashion-products" ] && REBUILD="DATA=$DATA $REBUILD"
    COMMAND="$REBUILD (trains: shelfsight train --data $DATA ${SOURCES[*]} ${RECIPE[*]})"
    echo "== training: shelfsight train --data $DATA ${SOURCES[*]} ${RECIPE[*]} --out $FROM"
    .venv/bin/shelfsight train --data "$DATA" "${SOURCES[@]}" "${RECIPE[@]}" --out "$FROM" --report-dir "$WORK/report"
else
    # what calibration stores changes (floors, band check, shift guard): an existing bundle is calibrated again on
    # the validation split, under its float32 model version (a float16 bundle is cast back to float32 on load)
    echo "== recalibrating $FROM on the validation split of $DATA"
    .venv/bin/python - "$FROM" "$WORK/starter-fp32.safetensors" <<'PY'
import sys
from learner.model.bundle import load_bundle
from learner.model.manifest import read_manifest
src, dst = sys.argv[1:]
bundle = load_bundle(src)
if read_manifest(src).get("weights_dtype", "float32") != "float32":
    bundle.model_version = bundle.model_version.rsplit("-", 1)[0]  # the version of the weights before shrinking
bundle.save(dst)
PY
    if ! .venv/bin/python -c 'import sys; from learner.model.manifest import read_manifest
sys.exit(0 if read_manifest(sys.argv[1]).get("title_model") else 1)' "$WORK/starter-fp32.safetensors"; then
        # a bundle made before titles were read: its title model is trained on the same train split (~1 min)
        echo "== training the title model on the train split of $DATA"
        .venv/bin/shelfsight models add-title "$WORK/starter-fp32.safetensors" --data "$DATA" --no-fusion
    fi
    .venv/bin/shelfsight models calibrate "$WORK/starter-fp32.safetensors" --data "$DATA" --split val
    COMMAND="FROM=$FROM bash deploy/demo/build_starter.sh (the image model not retrained: a title model added when it had none, recalibrated on the validation split with the fusion of photos and title, and shrunk; the image recipe is the bundle's lineage)"
    FROM="$WORK/starter-fp32.safetensors"
fi

echo "== shrinking to float16"
.venv/bin/shelfsight models shrink "$FROM" --out "$OUT_DIR/starter.safetensors"

echo "== manifest"
.venv/bin/python deploy/demo/starter_manifest.py --bundle "$OUT_DIR/starter.safetensors" --data "$DATA" \
    --command "$COMMAND" --out "$OUT_DIR/starter.manifest.json"
