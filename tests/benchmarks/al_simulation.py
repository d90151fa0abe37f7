"""Offline benchmark: what the diversity routings buy over random and uncertainty routing, on frozen features. A PROXY
of the review loop, not the loop: no services, no fine-tuning of the CNN; minutes instead of hours.

    .venv/bin/python -m tests.benchmarks.al_simulation [--data DIR ...] [--features NPY_OR_NPZ ...]
        [--seeds 5] [--seed-size 200] [--batch 50] [--max-labels 400] [--arms random,uncertainty,...]
        [--pool-only DIR ...] [--quick] [--out runs/al-simulation]

Protocol (pool-based active learning):

1. Products: the labelled sets `--data` (default ../shared/data/fashion-products; more sets with the same columns add
   to the pool), one photo each, labelled in the fashion-products taxonomy's single-choice groups. The holdout is
   fixed: what the learner's own `HoldoutRule` (default salt and fraction) puts there, as
   tests/benchmarks/bench_active_learning.py does; no arm ever labels it. A `--pool-only` set (the 60x80
   thumbnails: labelled, but not the resolution a model is judged at) only adds to the pool: its products the rule
   reserves are left out, the others can be labelled, none is judged.
2. Features: the photos' ImageNet features (`learner.evaluation.label_issues.extract_features(bundle, samples,
   "imagenet")`, the pretrained backbone of `--bundle` without its head), frozen. `--features` gives them per data
   set: a .npy with one row per sample of `load_labelled_set(dir, taxonomy).samples`, in order, or an .npz with
   `ids` and `features`; without it they are computed and cached in `--out`/features-<set>.npz, keyed by sample id
   (about 15 photos/s on 2 cores).
3. The "model": one logistic regression per single-choice group on the standardised features (projected on their
   `--dims` first principal components, fitted once on the whole pool, unsupervised: for speed), refitted on all
   labels so far after each round (the proxy of the learner's fine-tune). Its probabilities become the products'
   values as the engine hands them to the router (argmax value, top-3 candidates; no hierarchy decoding, no
   auto-fill), and every arm chooses with the daemon's own routing code: a `ReviewPolicy` (margin uncertainty,
   every product a candidate: pool-based) with the arm's strategy, `RandomSample` (random), `BelowThreshold`
   (uncertainty: most uncertain first), `ClassBalanced` and `ClusterMargin` (learner/review/diversity.py; a fresh
   instance per round, no decay: each round routes the whole unlabelled pool, in an order shuffled by seed and
   round, and the batch is the queue's `--batch` highest priorities, as annotators take the top of the outbox).
4. Each seed draws its own seed set (`--seed-size` products of the non-holdout ones, labelled before round 1) and
   stream orders; every arm of a seed starts from the same seed set and sees the same orders, so arms are paired by
   seed. Rounds add `--batch` labels up to `--max-labels` beyond the seed set.
5. Metric: mean top-1 over the single-choice groups on the holdout. Per budget, each arm minus random, paired by
   seed, its mean and 95% Student-t interval over seeds (tests/benchmarks/al_report.py).

What the proxy leaves out: the CNN is not fine-tuned (a linear head on frozen ImageNet features learns differently
from a fine-tuned backbone), the routing sees the whole pool at once each round instead of a stream with a queue
that persists, and the uncertainties come from an uncalibrated linear head. A gap here says what the ranking can
buy; the full-loop benchmark (bench_active_learning) is what can justify a default.

Prints progress and a table (mean top-1 per arm; gap to random with its interval), writes `figures.json` and
`al-simulation.png` (curves and gaps with intervals) into `--out`. `--quick`: 2 seeds, small budgets, seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from connectors.records import Alternative, AttributeValue
from learner.model.taxonomy import AttributeGroup, Taxonomy, load_taxonomy
from learner.review.caps import ReviewCaps
from learner.review.diversity import ClassBalanced, ClusterMargin
from learner.review.policy import BelowThreshold, RandomSample, ReviewPolicy, RoutingStrategy
from tests.benchmarks.al_report import plot_simulation, t_interval

ROOT = Path(__file__).resolve().parents[2]
TAXONOMY = ROOT / "learner" / "taxonomies" / "fashion-products.yaml"
DATA = ROOT.parent / "shared" / "data" / "fashion-products"
BUNDLE = ROOT / "deploy" / "demo" / "starter.safetensors"
ARMS = ("random", "uncertainty", "class_balanced", "cluster_margin")
T0 = datetime(2026, 12, 1, tzinfo=UTC)
TOP_K = 3  # the engine's default number of candidates per group


@dataclass
class Pool:
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N, G) int: value index per single-choice group, -1 unknown
    ids: list[str]  # product ids (the split keys)
    groups: list[AttributeGroup]  # the single-choice classifier groups, columns of `labels`
    holdout: np.ndarray  # (N,) bool: the learner's holdout


# -- data ---------------------------------------------------------------------------------------------------------


def single_groups(taxonomy: Taxonomy) -> list[AttributeGroup]:
    return [g for g in taxonomy.classifier_groups if not g.multi_label]


def _holdout(ids: Sequence[str]) -> np.ndarray:
    from learner.lifecycle.holdout import HoldoutRule

    rule = HoldoutRule()
    return np.array([rule.contains(i) for i in ids], dtype=bool)


def features_of(data: Path, samples: Sequence[Any], given: Path | None, cache: Path, bundle: Path) -> np.ndarray:
    ids = [s.sample_id for s in samples]
    if given is not None:
        if given.suffix == ".npz":
            stored = np.load(given)
            row = {str(i): k for k, i in enumerate(stored["ids"])}
            missing = [i for i in ids if i not in row]
            if missing:
                raise SystemExit(f"{given} lacks {len(missing)} samples of {data} (e.g. {missing[:3]})")
            return np.asarray(stored["features"][[row[i] for i in ids]], dtype=np.float32)
        features = np.load(given)
        if len(features) != len(ids):
            raise SystemExit(f"{given} has {len(features)} rows, {data} has {len(ids)} samples")
        return np.asarray(features, dtype=np.float32)
    if cache.exists():
        stored = np.load(cache)
        if [str(i) for i in stored["ids"]] == ids:
            return np.asarray(stored["features"], dtype=np.float32)
    from learner.evaluation.label_issues import extract_features
    from learner.model.bundle import load_bundle

    started = time.monotonic()
    log = lambda i, n: print(f"  features {data.name}: {i}/{n} ({time.monotonic() - started:.0f}s)", flush=True)  # noqa: E731
    features = extract_features(load_bundle(bundle), samples, "imagenet", progress=log)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, ids=np.array(ids), features=features)
    return features


def judged_rows(holdout: np.ndarray, pool_only: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which products a pool keeps, and which of those are its holdout: a product of a pool-only set (thumbnails:
    labelled, but not the serving resolution a model is judged at) is never judged; one the holdout rule reserves
    is never labelled either, so it is left out altogether."""
    keep = ~(holdout & pool_only)
    return keep, (holdout & ~pool_only)[keep]


def load_pool(
    data: Sequence[Path],
    features: Sequence[Path],
    out: Path,
    bundle: Path,
    taxonomy: Taxonomy,
    pool_only: Sequence[Path] = (),
) -> Pool:
    """The labelled sets as one pool (a product id already seen in an earlier set is skipped); the `pool_only` sets'
    products can be labelled but are never in the holdout (`judged_rows`)."""
    from learner.datasets.labelled import load_labelled_set

    groups = single_groups(taxonomy)
    rows: list[np.ndarray] = []
    labels: list[list[int]] = []
    ids: list[str] = []
    only: list[bool] = []
    seen: set[str] = set()
    for k, path in enumerate(data):
        samples = load_labelled_set(path, taxonomy).samples
        given = features[k] if k < len(features) else None
        feats = features_of(path, samples, given, out / f"features-{path.name}.npz", bundle)
        for s, f in zip(samples, feats, strict=True):
            if s.split_key in seen:
                continue
            seen.add(s.split_key)
            ids.append(s.split_key)
            rows.append(f)
            labels.append([_index(s.labels.get(g.name)) for g in groups])
            only.append(path in pool_only)
    keep, holdout = judged_rows(_holdout(ids), np.array(only, dtype=bool))
    return Pool(
        np.stack(rows)[keep],
        np.array(labels, dtype=np.int64)[keep],
        [i for i, k in zip(ids, keep, strict=True) if k],
        groups,
        holdout,
    )


def _index(label: Any) -> int:
    return label if isinstance(label, int) else -1


def synthetic_pool(taxonomy: Taxonomy, n: int = 600, dim: int = 16, seed: int = 0) -> Pool:
    """Products whose features are the sum of their values' means plus noise (for the harness's test)."""
    rng = np.random.default_rng(seed)
    groups = single_groups(taxonomy)
    labels = np.stack([rng.integers(0, min(4, len(g.values)), size=n) for g in groups], axis=1)
    means = [rng.normal(size=(len(g.values), dim)) for g in groups]
    features = sum(means[j][labels[:, j]] for j in range(len(groups))) + rng.normal(scale=1.5, size=(n, dim))
    ids = [f"s{i}" for i in range(n)]
    return Pool(np.asarray(features, dtype=np.float32), labels, ids, groups, _holdout(ids))


# -- the model ----------------------------------------------------------------------------------------------------


def fit_predict(pool: Pool, x: np.ndarray, train: np.ndarray, predict: np.ndarray) -> list[np.ndarray]:
    """Per group, (len(predict), n values) probabilities of a logistic regression fitted on `train`'s labels."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # lbfgs stops at max_iter on a few small fits
    out = []
    for j, group in enumerate(pool.groups):
        y = pool.labels[train, j]
        keep = train[y >= 0]
        y = y[y >= 0]
        probs = np.zeros((len(predict), len(group.values)))
        present = np.unique(y)
        if len(present) == 1:
            probs[:, present[0]] = 1.0
        elif len(present) > 1:
            head = LogisticRegression(C=0.5, max_iter=300).fit(x[keep], y)
            probs[:, head.classes_] = head.predict_proba(x[predict])
        else:
            probs[:] = 1.0 / len(group.values)
        out.append(probs)
    return out


def mean_top1(pool: Pool, probs: list[np.ndarray], rows: np.ndarray) -> float:
    scores = []
    for j, p in enumerate(probs):
        y = pool.labels[rows, j]
        known = y >= 0
        if known.any():
            scores.append(float((p.argmax(axis=1)[known] == y[known]).mean()))
    return statistics.fmean(scores)


def candidates(probs: list[np.ndarray]) -> list[tuple[list[list[int]], list[list[float]]]]:
    """Per group, each product's top-k value indices and their probabilities (rounded as the engine rounds)."""
    out = []
    for p in probs:
        top = np.argsort(-p, axis=1)[:, :TOP_K]
        out.append((top.tolist(), np.round(np.take_along_axis(p, top, axis=1), 4).tolist()))
    return out


def attributes(
    groups: Sequence[AttributeGroup], tops: list[tuple[list[list[int]], list[list[float]]]], row: int
) -> list[AttributeValue]:
    """One product's values as the engine hands them to the router: the best value and its top-k candidates."""
    out = []
    for g, (index, conf) in zip(groups, tops, strict=True):
        alts = [Alternative(g.values[i], c) for i, c in zip(index[row], conf[row], strict=True)]
        out.append(AttributeValue(g.name, alts[0].value, alts[0].confidence, alts))
    return out


# -- routing ------------------------------------------------------------------------------------------------------


def strategy(arm: str, taxonomy: Taxonomy, seed: int) -> RoutingStrategy:
    if arm == "random":
        return RandomSample(1.0, seed)
    if arm == "uncertainty":
        return BelowThreshold()
    if arm == "class_balanced":
        return ClassBalanced(taxonomy, half_life=None)
    if arm == "cluster_margin":
        return ClusterMargin(taxonomy, half_life=None)
    raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")


def choose(
    arm: str, taxonomy: Taxonomy, pool: Pool, probs: list[np.ndarray], rows: np.ndarray, k: int, seed: int
) -> np.ndarray:
    """The `k` products of `rows` (whose probabilities are `probs`, row-aligned) the arm's queue puts first: each is
    decided by a `ReviewPolicy` in a stream order shuffled by `seed`; highest priority first, ties by arrival."""
    policy = ReviewPolicy(
        taxonomy,
        {},
        default_threshold=1.01,  # every value is low: every product is a candidate (pool-based)
        uncertainty="margin",
        strategies=[strategy(arm, taxonomy, seed)],
        caps=ReviewCaps(),
    )
    queue: list[tuple[float, int, int]] = []
    tops = candidates(probs)
    for arrival, i in enumerate(np.random.default_rng(seed).permutation(len(rows)).tolist()):
        decision = policy.decide(attributes(pool.groups, tops, i), T0)
        if decision.routed:
            queue.append((-decision.priority, arrival, int(rows[i])))
    queue.sort()
    return np.array([row for _, _, row in queue[:k]], dtype=np.int64)


def _seed_of(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


def run_arm(
    arm: str, taxonomy: Taxonomy, pool: Pool, x: np.ndarray, seed: int, seed_size: int, batch: int, rounds: int
) -> list[dict[str, Any]]:
    """One (arm, seed): the holdout's mean top-1 after the seed set and after each round."""
    holdout = np.flatnonzero(pool.holdout)
    rest = np.flatnonzero(~pool.holdout)
    order = np.random.default_rng(_seed_of("seed-set", seed)).permutation(rest)
    labelled, unlabelled = order[:seed_size], np.sort(order[seed_size:])
    out = []
    for rnd in range(rounds + 1):
        probs = fit_predict(pool, x, labelled, np.concatenate([holdout, unlabelled]))
        out.append(
            {
                "round": rnd,
                "labels": len(labelled) - seed_size,
                "mean_top1": mean_top1(pool, [p[: len(holdout)] for p in probs], holdout),
            }
        )
        if rnd == rounds:
            break
        chosen = choose(
            arm, taxonomy, pool, [p[len(holdout) :] for p in probs], unlabelled, batch, _seed_of("stream", seed, rnd)
        )
        labelled = np.concatenate([labelled, chosen])
        unlabelled = np.setdiff1d(unlabelled, chosen)
    return out


# -- across seeds -------------------------------------------------------------------------------------------------


def summarise(runs: Sequence[dict[str, Any]], arms: Sequence[str]) -> list[dict[str, Any]]:
    """Per budget: each arm's mean top-1 over seeds, and its gap to random paired by seed with a 95% t-interval;
    with an uncertainty arm, each diversity arm's gap to uncertainty too (`vs_uncertainty`: mean, low, high)."""
    by = {(r["arm"], r["seed"]): {x["round"]: x for x in r["rounds"]} for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    rounds = sorted({x["round"] for r in runs for x in r["rounds"]})
    table = []
    for rnd in rounds:
        row: dict[str, Any] = {"round": rnd, "labels": by[(arms[0], seeds[0])][rnd]["labels"], "arms": {}}
        for arm in arms:
            values = [by[(arm, s)][rnd]["mean_top1"] for s in seeds]
            gaps = [v - by[("random", s)][rnd]["mean_top1"] for v, s in zip(values, seeds, strict=True)]
            interval = t_interval(gaps)
            row["arms"][arm] = {
                "mean_top1": statistics.fmean(values),
                "per_seed": dict(zip(seeds, values, strict=True)),
                "gap": statistics.fmean(gaps),
                "gap_low": interval[1] if interval else None,
                "gap_high": interval[2] if interval else None,
            }
            if arm in ("class_balanced", "cluster_margin") and "uncertainty" in arms:
                over = [v - by[("uncertainty", s)][rnd]["mean_top1"] for v, s in zip(values, seeds, strict=True)]
                row["arms"][arm]["vs_uncertainty"] = [
                    statistics.fmean(over),
                    *(t_interval(over) or (0, None, None))[1:],
                ]
        table.append(row)
    return table


def format_table(table: Sequence[dict[str, Any]], arms: Sequence[str]) -> str:
    lines = [
        " | ".join(
            ["labels", *(f"{a} top-1" for a in arms), *(f"{a} - random [95% CI]" for a in arms if a != "random")]
        )
    ]
    for row in table:
        cells = [str(row["labels"])] + [f"{row['arms'][a]['mean_top1']:.4f}" for a in arms]
        for a in arms:
            if a == "random":
                continue
            g = row["arms"][a]
            ci = "" if g["gap_low"] is None else f" [{g['gap_low']:+.4f}, {g['gap_high']:+.4f}]"
            cells.append(f"{g['gap']:+.4f}{ci}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _gap(mean: float, low: float | None, high: float | None) -> str:
    return f"{mean:+.4f}" + ("" if low is None or high is None else f" [{low:+.4f}, {high:+.4f}]")


def simulate(
    pool: Pool,
    taxonomy: Taxonomy,
    arms: Sequence[str],
    seeds: Sequence[int],
    seed_size: int,
    batch: int,
    max_labels: int,
    say: Callable[[str], None] = print,
    dims: int = 256,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every (seed, arm) run and the across-seed table."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    x = StandardScaler().fit_transform(pool.features)
    if x.shape[1] > dims:
        x = PCA(dims, random_state=0).fit_transform(x)
    x = x.astype(np.float32)
    threadpool_limits(1)  # small problems: BLAS threads only contend
    rounds = max_labels // batch
    runs = []
    started = time.monotonic()
    for seed in seeds:
        for arm in arms:
            t = time.monotonic()
            curve = run_arm(arm, taxonomy, pool, x, seed, seed_size, batch, rounds)
            runs.append({"arm": arm, "seed": seed, "rounds": curve})
            say(
                f"seed {seed} {arm:>14}: top-1 {curve[0]['mean_top1']:.4f} -> {curve[-1]['mean_top1']:.4f} "
                f"({time.monotonic() - t:.1f}s, {time.monotonic() - started:.0f}s in all)"
            )
    return runs, summarise(runs, list(arms))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--data", type=Path, action="append", help="labelled set (repeat for more; default fashion-products)"
    )
    ap.add_argument("--features", type=Path, action="append", default=[], help=".npy/.npz per --data, in order")
    ap.add_argument(
        "--pool-only",
        type=Path,
        action="append",
        default=[],
        help="a --data set whose products may be labelled but are never judged (thumbnails)",
    )
    ap.add_argument("--bundle", type=Path, default=BUNDLE, help="whose backbone computes features when not given")
    ap.add_argument("--synthetic", type=int, default=0, help="N synthetic products instead of --data (tests)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-size", type=int, default=200)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--max-labels", type=int, default=400)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--dims", type=int, default=256, help="principal components of the standardised features")
    ap.add_argument("--quick", action="store_true", help="2 seeds, seed set 50, batches of 20 up to 60 labels")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "al-simulation")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.seed_size, args.batch, args.max_labels = 2, 50, 20, 60
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm {unknown[0]!r}; arms: {', '.join(ARMS)}")
    if "random" not in arms:
        arms.insert(0, "random")  # the baseline every gap is measured against
    taxonomy = load_taxonomy(TAXONOMY)
    started = time.monotonic()
    if args.synthetic:
        pool = synthetic_pool(taxonomy, args.synthetic)
    else:
        data = args.data or [DATA]
        if not all(d.exists() for d in data):
            print(f"no labelled set at {', '.join(str(d) for d in data if not d.exists())}: nothing to simulate")
            return 0
        strays = [p for p in args.pool_only if p not in data]
        if strays:
            raise SystemExit(f"--pool-only {strays[0]} is not one of the --data sets")
        pool = load_pool(data, args.features, args.out, args.bundle, taxonomy, args.pool_only)
    print(
        f"pool: {len(pool.ids)} products ({int(pool.holdout.sum())} in the holdout), features {pool.features.shape[1]}"
        f", groups {', '.join(g.name for g in pool.groups)}; arms {', '.join(arms)}; seeds {args.seeds}",
        flush=True,
    )
    say = lambda line: print(line, flush=True)  # noqa: E731
    runs, table = simulate(
        pool, taxonomy, arms, range(1, args.seeds + 1), args.seed_size, args.batch, args.max_labels, say, args.dims
    )
    wall = time.monotonic() - started
    print("\nholdout mean top-1 over the single-choice groups; gap: arm - random, paired by seed, 95% t-interval")
    print(format_table(table, arms))
    versus = [a for a in arms if "vs_uncertainty" in table[0]["arms"][a]]
    if versus:
        print("\ndiversity - uncertainty, paired by seed, 95% t-interval")
        for row in table:
            cells = [f"{a} {_gap(*row['arms'][a]['vs_uncertainty'])}" for a in versus]
            print(f"{row['labels']} | " + " | ".join(cells))
    print(f"\nwall time {wall:.0f}s")
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["data"] = [str(d) for d in (args.data or [DATA])]
    config["features"] = [str(f) for f in args.features]
    config["pool_only"] = [str(p) for p in args.pool_only]
    figures = {"config": config, "pool": len(pool.ids), "holdout": int(pool.holdout.sum()), "wall_s": round(wall, 1)}
    (args.out / "figures.json").write_text(json.dumps({**figures, "table": table, "runs": runs}, indent=1))
    plot_simulation(table, arms, args.out / "al-simulation.png")
    print(f"wrote {args.out / 'figures.json'} and {args.out / 'al-simulation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
