"""What a product's title alone says: the title model's top-1 per group on the VALIDATION split (never test).

Trains the title model (learner/training/title.py) on the train split of the project's split rule (SplitRule
defaults, the split `shelfsight train` uses), calibrates it on the validation split and prints its validation top-1
per group, on the titles as written and with the attribute words masked (`mask_attribute_words`), beside the
TF-IDF figures the issue quotes. Settings can be varied to tune on validation:

    nice -n 5 .venv/bin/python -m tests.benchmarks.title_model
    nice -n 5 .venv/bin/python -m tests.benchmarks.title_model --dim 96 --epochs 15 --mask-share 0.3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from learner.datasets.labelled import SplitRule, load_labelled_set
from learner.model.taxonomy import load_taxonomy
from learner.training import title as title_training

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fashion-products"
# issue 27: a TF-IDF linear model of the title on unseen products (and with the attribute words removed)
TFIDF = {"articleType": 0.983, "baseColour": 0.959, "gender": 0.997, "usage": 0.961, "season": 0.878}
TFIDF_MASKED = {"articleType": 0.80, "gender": 0.87, "usage": 0.92, "baseColour": 0.26}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=title_training.DEFAULT_EPOCHS)
    parser.add_argument("--dim", type=int, default=title_training.DEFAULT_DIM)
    parser.add_argument("--lr", type=float, default=title_training.DEFAULT_LR)
    parser.add_argument("--batch-size", type=int, default=title_training.DEFAULT_BATCH)
    parser.add_argument("--dropout", type=float, default=title_training.DEFAULT_DROPOUT)
    parser.add_argument("--weight-decay", type=float, default=title_training.DEFAULT_WEIGHT_DECAY)
    parser.add_argument("--min-count", type=int, default=title_training.DEFAULT_MIN_COUNT)
    parser.add_argument("--max-features", type=int, default=title_training.DEFAULT_MAX_FEATURES)
    parser.add_argument("--mask-share", type=float, default=title_training.DEFAULT_MASK_SHARE)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    taxonomy = load_taxonomy("fashion-products")
    data = load_labelled_set(args.data, taxonomy)
    rule = SplitRule()
    train, val = data.split(rule, "train"), data.split(rule, "val")
    started = time.time()
    model = title_training.train_title_model(
        train,
        val,
        taxonomy,
        seed=args.seed,
        epochs=args.epochs,
        dim=args.dim,
        lr=args.lr,
        batch_size=args.batch_size,
        dropout=args.dropout,
        weight_decay=args.weight_decay,
        min_count=args.min_count,
        max_features=args.max_features,
        mask_share=args.mask_share,
        progress=None if args.quiet else print,
    )
    elapsed = time.time() - started
    plain, masked = model.metrics["validation"], model.metrics["validation_masked"]
    print(f"train {len(train)} / val {len(val)} products; {len(model.vocab)} features x {model.dim}; {elapsed:.1f} s")
    print(f"{'group':<15}{'top-1':>8}{'tfidf':>8}{'masked':>9}{'tfidf':>8}{'autofill':>10}")
    for g, v in plain["top1"].items():
        ref, ref_m = TFIDF.get(g), TFIDF_MASKED.get(g)
        print(
            f"{g:<15}{v:>8.4f}{'' if ref is None else f'{ref:.3f}':>8}{masked['top1'][g]:>9.4f}"
            f"{'' if ref_m is None else f'{ref_m:.2f}':>8}{plain['autofill_coverage'][g]:>10.3f}"
        )
    print(f"no signal: {plain['no_signal']:.4f} as written, {masked['no_signal']:.4f} masked")
    if args.json:
        out = {"config": model.config, "validation": plain, "validation_masked": masked, "elapsed_s": elapsed}
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
