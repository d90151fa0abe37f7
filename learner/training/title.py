"""Training the title model (learner/model/title_model.py) in torch: a fastText-style bag of n-grams.

Why this model: a product title is a short bag of tell-tale words ("Puma Men Black Running Shoes"); a linear model
on word and character n-grams is what TF-IDF baselines and fastText (Joulin et al., 2016) show to be strong on such
text, trains in seconds on a CPU, needs no new dependency (torch is already the trainer, numpy the server) and
serves torch-free as a lookup, a mean and one matrix product per group.

`train_title_model(train, val, taxonomy, ...)`:
1. the vocabulary: the features (`title_features`) of the training titles seen at least `min_count` times, the
   `max_features` most frequent kept (ties by name: deterministic);
2. the model: `EmbeddingBag(V, dim, mode="mean")` over a title's feature ids, dropout, one linear head per
   single-choice classifier group; cross-entropy per group, a sample whose label is missing in a group masked out of
   that group's loss, each sample weighted by its `weights` entry (the thumbnails' titles, another era of the catalog,
   weigh the recipe's `low_res_title_weight`: docs/model-card.md, "Its title model: whose titles teach");
   AdamW with a linear decay, `epochs` passes in a seeded order (the same seed, the same model);
   with `mask_share` > 0 that share of the training titles, drawn anew each epoch, has its attribute words removed
   (`mask_attribute_words`) so the model also learns the brand and model names, not only the value words;
3. calibration on the validation titles that give a signal (`fit_title_calibration`): temperatures by NLL and
   title-only auto-fill thresholds on the hierarchy-decoded values, by the image model's own rule
   (learner.evaluation.calibration.fit_calibration, learner.evaluation.selective.choose_autofill_threshold);
4. figures on the validation titles (`title_metrics`): top-1 per group, as written and with the attribute words
   masked, and the share of titles without a signal.

`attach_title_model(bundle, train, val, val_predictions, ...)` is how `shelfsight train` (learner/training/train.py)
and retraining (learner/training/finetune.py) give a new bundle its title model and its photos-and-title fusion
(learner.evaluation.fusion.fit_bundle_fusion) on the same splits as its image model; without titles a fine-tune keeps
the champion's. Defaults (dim 64, 20 epochs, lr 0.05, batch 128, dropout 0.1, 30% of titles masked per epoch) were
chosen on the fashion-products validation split (`python -m tests.benchmarks.title_model`), never on test.

Must not: read files, save bundles or read configuration.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from learner.datasets.labelled import IGNORE_INDEX, Sample
from learner.evaluation.evaluate import GroupPredictions
from learner.evaluation.fusion import fit_bundle_fusion
from learner.evaluation.selective import DEFAULT_TARGET_PRECISION
from learner.evaluation.title_calibration import (
    TitleCalibrationError,
    fit_title_calibration,
    targets_of,
    title_metrics,
    titled,
)
from learner.model.bundle import ModelBundle
from learner.model.taxonomy import Taxonomy
from learner.model.title_model import (
    FEATURES_VERSION,
    TitleModel,
    attribute_words,
    mask_attribute_words,
    title_features,
)
from learner.training.errors import TrainingError

DEFAULT_EPOCHS = 20
DEFAULT_DIM = 64
DEFAULT_MIN_COUNT = 2
DEFAULT_MAX_FEATURES = 50_000
DEFAULT_LR = 0.05
DEFAULT_BATCH = 128
DEFAULT_DROPOUT = 0.1
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_MASK_SHARE = 0.3
FINE_TUNE_EPOCHS = 8  # retraining: the champion's title model, fine-tuned on the corrections and a replay
FINE_TUNE_LR = 0.01


def build_vocab(
    titles: Sequence[str], min_count: int = DEFAULT_MIN_COUNT, max_features: int = DEFAULT_MAX_FEATURES
) -> dict[str, int]:
    """Features seen in at least `min_count` titles, the `max_features` most frequent (ties by name)."""
    counts: Counter[str] = Counter()
    for t in titles:
        counts.update(set(title_features(t)))
    kept = sorted((f for f, n in counts.items() if n >= min_count), key=lambda f: (-counts[f], f))[:max_features]
    return {f: i for i, f in enumerate(sorted(kept))}


class BagOfNgrams(nn.Module):
    """Mean feature embedding, dropout, one linear head per group (what `TitleModel` computes in numpy)."""

    def __init__(self, vocab_size: int, dim: int, classes: dict[str, int], dropout: float) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        nn.init.uniform_(self.embedding.weight, -1.0 / dim, 1.0 / dim)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({g: nn.Linear(dim, c) for g, c in classes.items()})

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.dropout(self.embedding(ids, offsets))
        return {g: head(h) for g, head in self.heads.items()}

    def to_title_model(self, vocab: dict[str, int], config: dict[str, Any]) -> TitleModel:
        heads = {
            g: (head.weight.detach().cpu().numpy().copy(), head.bias.detach().cpu().numpy().copy())
            for g, head in self.heads.items()
            if isinstance(head, nn.Linear)
        }
        return TitleModel(vocab, self.embedding.weight.detach().cpu().numpy().copy(), heads, config=config)


def _batch(id_lists: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(ids) for ids in id_lists]
    offsets = torch.tensor([0, *np.cumsum(lengths[:-1]).tolist()], dtype=torch.long)
    return torch.tensor([i for ids in id_lists for i in ids], dtype=torch.long), offsets


def train_title_model(
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    taxonomy: Taxonomy,
    *,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    dim: int = DEFAULT_DIM,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH,
    dropout: float = DEFAULT_DROPOUT,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    min_count: int = DEFAULT_MIN_COUNT,
    max_features: int = DEFAULT_MAX_FEATURES,
    mask_share: float = DEFAULT_MASK_SHARE,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    progress: Callable[[str], None] | None = None,
    init: TitleModel | None = None,
    weights: Sequence[float] | None = None,
) -> TitleModel:
    """A calibrated title model trained on the titles of `train_samples`, calibrated and measured on those of
    `val_samples` (see the module docstring). `weights`: per sample of `train_samples`, its weight in the loss
    (None: 1 each; the thumbnails of another era weigh less, see `attach_title_model`). TrainingError when either
    split has no title, no vocabulary results, or `weights` does not fit."""
    say = progress or (lambda _msg: None)
    if weights is not None and (len(weights) != len(train_samples) or not all(w >= 0 for w in weights)):
        raise TrainingError(f"{len(weights)} title weights for {len(train_samples)} samples (each >= 0)")
    given = [1.0] * len(train_samples) if weights is None else [float(w) for w in weights]
    kept = [(s, w) for s, w in zip(train_samples, given, strict=True) if s.title and s.title.strip() and w > 0]
    train, train_weights = [s for s, _ in kept], np.array([w for _, w in kept], dtype=np.float32)
    val = titled(val_samples)
    if not train or not val:
        raise TrainingError(f"no titles to train on: {len(train)} training and {len(val)} validation titles")
    started = time.time()
    if init is not None:  # a warm start: its vocabulary and weights (its dimension wins)
        vocab, dim = dict(init.vocab), init.dim
    else:
        vocab = build_vocab([s.title or "" for s in train], min_count, max_features)
    if not vocab:
        raise TrainingError(f"no title feature occurs in {min_count} training titles")
    config: dict[str, Any] = {
        "features_version": FEATURES_VERSION,
        "epochs": epochs,
        "dim": dim,
        "lr": lr,
        "batch_size": batch_size,
        "dropout": dropout,
        "weight_decay": weight_decay,
        "min_count": min_count,
        "max_features": max_features,
        "mask_share": mask_share,
        "seed": seed,
        **({"weighted": _weight_summary(train_weights)} if weights is not None else {}),
        "warm_start": init is not None,
        "train_titles": len(train),
        "val_titles": len(val),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses to thread hand-offs (restored when done)
    try:
        with torch.random.fork_rng(devices=[]):  # initialisation and dropout from the seed; the caller's RNG untouched
            torch.manual_seed(seed)
            net = _fit(train, val, taxonomy, vocab, config, say, init, train_weights)
    finally:
        torch.set_num_threads(threads)
    model = net.to_title_model(vocab, config)
    try:
        fit_title_calibration(model, val, taxonomy, target_precision=target_precision, fitted_on={"split": "val"})
    except TitleCalibrationError as exc:
        raise TrainingError(f"title model: {exc}") from None
    model.metrics = {
        "validation": title_metrics(model, val, taxonomy, masked=False),
        "validation_masked": title_metrics(model, val, taxonomy, masked=True),
    }
    model.config["elapsed_s"] = round(time.time() - started, 1)
    say(f"title model: {len(vocab)} features x {dim}, {model.config['elapsed_s']} s")
    return model


def _fit(
    train: Sequence[Sample],
    val: Sequence[Sample],
    taxonomy: Taxonomy,
    vocab: dict[str, int],
    config: dict[str, Any],
    say: Callable[[str], None],
    init: TitleModel | None = None,
    weights: np.ndarray | None = None,
) -> BagOfNgrams:
    """The trained network (in eval mode) for the recipe in `config`, from `init`'s weights when given; `weights`
    (N,): each training sample's weight in its groups' losses (a weighted mean over the batch's labelled rows)."""
    groups = [g for g in taxonomy.classifier_groups if not g.multi_label]
    epochs, batch_size, mask_share = int(config["epochs"]), int(config["batch_size"]), float(config["mask_share"])
    generator = torch.Generator().manual_seed(int(config["seed"]))
    net = BagOfNgrams(len(vocab), int(config["dim"]), {g.name: len(g.values) for g in groups}, config["dropout"])
    if init is not None:
        with torch.no_grad():
            net.embedding.weight.copy_(torch.from_numpy(init.embedding))
            for g, (w, b) in init.heads.items():
                head = net.heads[g]
                if isinstance(head, nn.Linear):
                    head.weight.copy_(torch.from_numpy(w))
                    head.bias.copy_(torch.from_numpy(b))
    words = attribute_words(taxonomy)
    plain = [[vocab[f] for f in title_features(s.title) if f in vocab] for s in train]
    masked = [[vocab[f] for f in title_features(mask_attribute_words(s.title or "", taxonomy, words)) if f in vocab]
              for s in train] if mask_share > 0 else plain  # fmt: skip
    targets = {g.name: torch.from_numpy(targets_of(train, g)) for g in groups}
    usable = np.array([bool(ids) for ids in plain])
    steps = epochs * math.ceil(int(usable.sum()) / batch_size)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: max(0.0, 1.0 - step / max(1, steps)))
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="none")
    sample_weight = torch.from_numpy(np.ones(len(train), np.float32) if weights is None else weights)

    def group_loss(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        w = w * (y >= 0)
        return (loss_fn(z, y) * w).sum() / w.sum().clamp_min(1e-12)

    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(train), generator=generator).numpy()
        swap = torch.rand(len(train), generator=generator).numpy() < mask_share
        order = order[usable[order]]
        total, batches = 0.0, 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, offsets = _batch([masked[i] if swap[i] and masked[i] else plain[i] for i in rows])
            index = torch.from_numpy(rows)
            logits = net(ids, offsets)
            row_weight = sample_weight[index]
            losses = [
                group_loss(z, targets[g][index], row_weight)
                for g, z in logits.items()
                if (targets[g][index] >= 0).any()
            ]
            if not losses:
                continue
            loss = torch.stack(losses).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
            batches += 1
        if not math.isfinite(total):
            raise TrainingError(f"title model: the training loss is not finite in epoch {epoch}; lower lr")
        top1 = title_metrics(net.eval().to_title_model(vocab, config), val, taxonomy, masked=False)["top1"]
        tops = " ".join(f"{g}={v:.3f}" for g, v in top1.items() if v is not None)
        say(f"title epoch {epoch}/{epochs} loss {total / max(1, batches):.3f} | val {tops}")
    return net.eval()


def attach_title_model(
    bundle: ModelBundle,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    val_predictions: Mapping[str, GroupPredictions],
    *,
    seed: int,
    say: Callable[[str], None],
    fallback: ModelBundle | None = None,
    weights: Sequence[float] | None = None,
) -> str:
    """Give a freshly trained, calibrated `bundle` its title model and its photos-and-title fusion, in place, and say
    what was done. With titles in both splits: a title model trained on the titles of `train_samples` and calibrated
    on those of `val_samples`; when `fallback` (the champion a fine-tune started from) has a title model, that one is
    fine-tuned instead (its vocabulary and weights, `FINE_TUNE_EPOCHS` at `FINE_TUNE_LR`: retraining's samples are
    the new corrections and a replay, not the whole set) and kept only when its mean validation top-1 is at least the
    champion's on the same titles, else the champion's is kept. `weights`: per sample of `train_samples`, its title's
    weight in the loss (`train_title_model`). Without titles, `fallback`'s title model is kept. Then
    the fusion, fitted on the bundle's raw `val_predictions` (rows in `val_samples` order) and those titles
    (learner.evaluation.fusion.fit_bundle_fusion); without validation titles `fallback`'s fusion is kept."""
    champion = fallback.title_model if fallback is not None else None
    train, val = titled(train_samples), titled(val_samples)
    if train and val and champion is None:
        bundle.title_model = train_title_model(
            train_samples, val, bundle.taxonomy, seed=seed, progress=say, weights=weights
        )
        done = f"title model trained on {len(train)} titles"
    elif train and val and champion is not None:
        tuned = train_title_model(
            train_samples,
            val,
            bundle.taxonomy,
            seed=seed,
            epochs=FINE_TUNE_EPOCHS,
            lr=FINE_TUNE_LR,
            progress=say,
            init=champion,
            weights=weights,
        )
        new, old = (_mean_top1(m, val, bundle.taxonomy) for m in (tuned, champion))
        bundle.title_model = tuned if new >= old else champion
        verdict = "kept" if new >= old else "not kept: the champion's stays"
        done = f"title model fine-tuned on {len(train)} titles, mean validation top-1 {new:.4f} vs {old:.4f}: {verdict}"
    elif champion is not None:
        bundle.title_model = champion
        done = "no titles in the data: the title model of the starting bundle is kept"
    else:
        return "no titles in the data: no title model"
    fusion = fit_bundle_fusion(bundle, val_predictions, [s.title for s in val_samples]) if val else None
    if fusion is not None and not fusion.groups:  # too few validation titles to fit any group
        fusion = None
    if fusion is None and fallback is not None:
        fusion = fallback.fusion
    bundle.fusion = fusion
    return done + ("" if fusion is not None else "; no fusion fitted (no validation titles)")


def _weight_summary(weights: np.ndarray) -> dict[str, float]:
    """How many titles trained at full weight, how many lighter, and the lighter ones' weight sum (the lineage)."""
    light = weights[weights < 1.0]
    return {"full": int((weights >= 1.0).sum()), "lighter": int(light.size), "lighter_weight_sum": float(light.sum())}


def _mean_top1(model: TitleModel, samples: Sequence[Sample], taxonomy: Taxonomy) -> float:
    tops = [v for v in title_metrics(model, samples, taxonomy, masked=False)["top1"].values() if v is not None]
    return float(np.mean(tops)) if tops else 0.0
