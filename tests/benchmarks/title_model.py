"""What a product's title alone says: the title model's top-1 per group on the VALIDATION split (never test).

Trains the title model (learner/training/title.py) on the train split of the project's split rule (SplitRule
defaults, the split `shelfsight train` uses), calibrates it on the validation split and prints its validation top-1
per group, on the titles as written and with the attribute words masked (`mask_attribute_words`), beside the
TF-IDF figures the issue quotes. Settings can be varied to tune on validation:

    nice -n 5 .venv/bin/python -m tests.benchmarks.title_model
    nice -n 5 .venv/bin/python -m tests.benchmarks.title_model --dim 96 --epochs 15 --mask-share 0.3
    nice -n 5 .venv/bin/python -m tests.benchmarks.title_model --tfidf   # the issue's baseline on this same split

`--tfidf` also fits the issue's kind of baseline on the same split, for a like-for-like comparison: a multinomial
logistic regression per group (L-BFGS, L2 with C=10) on L2-normalised TF-IDF (sublinear tf, smoothed idf) of the same
features (`title_features`, every feature of the training titles), trained and measured as written, then trained and
measured on masked titles (`mask_attribute_words`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from learner.datasets.labelled import Sample, SplitRule, load_labelled_set
from learner.evaluation.title_calibration import targets_of
from learner.model.taxonomy import Taxonomy, load_taxonomy
from learner.model.title_model import attribute_words, mask_attribute_words, title_features
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
    parser.add_argument("--tfidf", action="store_true", help="also fit the TF-IDF logistic regression baseline")
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
    out = {"config": model.config, "validation": plain, "validation_masked": masked, "elapsed_s": elapsed}
    if args.tfidf:
        out["tfidf"] = {
            "plain": tfidf_top1(train, val, taxonomy, False),
            "masked": tfidf_top1(train, val, taxonomy, True),
        }
        print("TF-IDF logistic regression on the same split (as written / trained and measured masked):")
        for g, v in out["tfidf"]["plain"].items():
            print(f"  {g:<15}{v:>8.4f}{out['tfidf']['masked'][g]:>9.4f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def tfidf_top1(train: Sequence[Sample], val: Sequence[Sample], taxonomy: Taxonomy, masked: bool) -> dict[str, float]:
    """Validation top-1 per group of an L2-regularised (C=10) logistic regression on TF-IDF title features."""
    words = attribute_words(taxonomy)

    def text(s: Sample) -> str:
        return mask_attribute_words(s.title or "", taxonomy, words) if masked else s.title or ""

    df: Counter[str] = Counter()
    for s in train:
        df.update(set(title_features(text(s))))
    vocab = {f: i for i, f in enumerate(sorted(df))}
    idf = np.array([math.log((1 + len(train)) / (1 + df[f])) + 1 for f in sorted(df)], dtype=np.float32)

    def matrix(samples: Sequence[Sample]) -> torch.Tensor:
        rows, cols, vals = [], [], []
        for r, s in enumerate(samples):
            counts = Counter(vocab[f] for f in title_features(text(s)) if f in vocab)
            v = np.array([(1 + math.log(n)) * idf[i] for i, n in counts.items()], dtype=np.float32)
            rows += [r] * len(counts)
            cols += list(counts)
            vals += list(v / (np.linalg.norm(v) or 1.0))
        index = torch.tensor([rows, cols], dtype=torch.long)
        return torch.sparse_coo_tensor(index, torch.tensor(vals), (len(samples), len(vocab))).coalesce()

    x_train, x_val = matrix(train), matrix(val)
    out: dict[str, float] = {}
    for g in (g for g in taxonomy.classifier_groups if not g.multi_label):
        w, b = _logistic(x_train, torch.from_numpy(targets_of(train, g)), len(g.values))
        with torch.no_grad():
            chosen = (torch.sparse.mm(x_val, w) + b).argmax(1).numpy()
        targets = targets_of(val, g)
        known = targets >= 0
        out[g.name] = float((chosen[known] == targets[known]).mean())
    return out


def _logistic(x: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of a multinomial logistic regression, L2 with C = 10, by L-BFGS (labels -100: left out)."""
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        z = torch.sparse.mm(x, w) + b
        loss = torch.nn.functional.cross_entropy(z, y, ignore_index=-100, reduction="sum") + (w * w).sum() / 20
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach(), b.detach()


if __name__ == "__main__":
    main()
