"""Benchmark: active learning through the whole review loop, uncertainty routing against random routing at the same
labelling budget, on ../shared/data/fashion-products.

    .venv/bin/python -m tests.benchmarks.bench_active_learning [--seed-size 200] [--rounds 5] [--budget 50]
        [--epochs 4] [--routing-seeds 1,2,3] [--seed-model BUNDLE] [--quick] [--out runs/bench-active-learning]

Protocol (real services only: Kafka, PostgreSQL and Label Studio started by deploy/dev, the services as
subprocesses configured by environment variables like an operator would):

1. Split the labelled products (labels.csv, one photo each) by product id: the holdout is what the learner's own
   `HoldoutRule` (default salt and fraction, pinned in each registry) puts there, so no arm ever trains on it; of
   the rest, a seed set (`--seed-size`, the products with the smallest sha256 of "seed:<id>") and the pool (the
   others, streamed `--chunk` per round in an order shuffled by the routing seed: sha256 of "stream:<seed>:<id>").
2. Train the seed model on the seed set with `learner.training.train` (EfficientNet-Lite0, `--freeze-stages` of its 9
   stages frozen, `--seed-epochs`), once; both arms start from it. It is kept as `seed.safetensors` in `--out`;
   `--seed-model` reuses one (same `--seed-size`) instead of training again.
3. Each routing seed (`--routing-seeds`, at least 3 to measure anything) runs both arms, one after the other, on the
   same stream of products: only the routing differs, so the arms are paired by seed. Each (arm, seed) gets fresh
   state: a database, a topic, a Label Studio project, a model registry with the seed model as
   champion, and its own `shelfsight run` (review routing on), `shelfsight review run` (webhook + polling) and
   `shelfsight learn` (the APScheduler service; its corrections trigger fires once a round's answers are in:
   `min_corrected_products` = budget, so exactly when the round's last product arrives). The learner's base data
   is the seed set plus the holdout products (the holdout is evaluated, never trained on); corrections add the
   annotated pool products. The holdout's floor and cap are switched
   off (`holdout_min_products` 0, a cap above the data), so every run of every arm scores the same fixed holdout.
   - uncertainty arm: `review.routing = uncertainty` (BelowThreshold on the bundle's calibrated thresholds, no audit
     sample); the queue is ranked most uncertain first (margin);
   - random arm: `review.routing = random` with rate 1: every product is queued with a random rank (seeded by the
     routing seed), so the first `budget` of the queue are a uniform random sample.
4. Each round: `--chunk` pool products are produced to Kafka; the daemon tags them with the current champion and
   routes; the review worker sends the routed ones to Label Studio; a scripted annotator
   (tests/benchmarks/annotator.py) answers the `--budget` highest-priority unannotated tasks with the true labels;
   the review worker brings the answers into the database; the learner's scheduler starts a run (fine-tune from the
   champion on base data + corrections, replay), evaluates champion and challenger on the holdout, and the gate
   promotes or rejects; on promotion the daemon hot-reloads the new champion before the next round.
5. After each round: labels used so far, the gate's decision, and the holdout figures of the champion after the
   round (the learner's own evaluation on the fixed holdout: per-group top-1, mean top-1 and mean macro-F1 over
   the single-choice groups), plus the challenger's figures, the gate's paired-bootstrap interval of the mean top-1
   difference (`win_low`..`win_high`), whether it was a significant win, and the round's wall time. Round 0 is the
   seed model (the first run's champion evaluation; identical for both arms).
6. Across seeds (tests/benchmarks/al_report.py): per arm and budget the mean and range of the champion's and the
   challenger's figures, and the uncertainty-minus-random gap, paired by seed, with a 95% Student-t interval over
   the seeds.

Prints one table per (arm, seed) and the across-seed tables; writes `figures.json` (configuration, every per-seed
round, the across-seed summary and gaps; rewritten after each (arm, seed), so an interrupted run keeps what it
finished), `bench-active-learning.png` (champion and challenger curves, mean and spread over seeds) and
`bench-active-learning-gap.png` (the gap with its interval) into `--out`. One seed with the default configuration
takes about 25 minutes on a 2-core CPU; `--quick` checks the harness in a few minutes and its figures mean little.
Exits with a message (status 0) when ../shared/data/fashion-products is absent.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.benchmarks.al_arm import TAXONOMY, ArmResult, Services, Split, fmt_figure, run_arm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))
DATA = ROOT.parent / "shared" / "data" / "fashion-products"
ARMS = ("uncertainty", "random")


# -- data ---------------------------------------------------------------------------------------------------------


def read_labels(data: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (data / "labels.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def split_products(ids: list[str], seed_size: int) -> Split:
    from learner.lifecycle.holdout import HoldoutRule

    rule = HoldoutRule()  # the learner's default rule, which the learner service below also uses
    holdout = sorted(i for i in ids if rule.contains(i))
    rest = [i for i in ids if not rule.contains(i)]
    by_hash = sorted(rest, key=lambda i: hashlib.sha256(f"seed:{i}".encode()).digest())
    return Split(holdout=holdout, seed=sorted(by_hash[:seed_size]), pool=by_hash[seed_size:])


def write_labelled_dir(path: Path, columns: list[str], rows: list[dict[str, str]], images: Path) -> Path:
    """A labels.csv with these rows and an images/ link to the shared photos (learner/datasets/labelled.py's layout)."""
    path.mkdir(parents=True, exist_ok=True)
    with (path / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (path / "images").symlink_to(images, target_is_directory=True)
    return path


def train_seed(seed_dir: Path, out: Path, epochs: int, freeze_stages: int) -> Path:
    from learner.datasets.labelled import SplitRule, load_labelled_set
    from learner.model.taxonomy import load_taxonomy
    from learner.training.recipe import TrainConfig
    from learner.training.train import train

    taxonomy = load_taxonomy(TAXONOMY)
    data = load_labelled_set(seed_dir, taxonomy, group_column="id")
    config = TrainConfig(
        epochs=epochs,
        freeze_stages=freeze_stages,
        patience=0,
        threads=2,
        workers=0,
        split=SplitRule(salt="bench-active-learning-seed", train=0.8, val=0.2),
        progress=True,
    )
    result = train(config, data, out, evaluate_test=False)
    return result.bundle_path


# -- report -------------------------------------------------------------------------------------------------------


def table(result: ArmResult) -> str:
    groups = list(result.rounds[0].top1) if result.rounds else []
    short = {g: g[:8] for g in groups}
    head = (
        f"{'round':>5} {'labels':>6} {'gate':<9} {'top-1':>6} {'mF1':>6} "
        + " ".join(f"{short[g]:>8}" for g in groups)
        + f" {'chal.top-1':>10} {'chal.mF1':>8} {'gate: chal-champ top-1 [CI]':>28} {'s':>6}"
    )
    lines = [f"{result.arm} routing, seed {result.seed} ({result.seconds / 60:.1f} min)", head]
    for r in result.rounds:
        win = ""
        if r.win_difference is not None:
            star = " *" if r.significant_win else ""
            win = f"{r.win_difference:+.3f} [{fmt_figure(r.win_low)}, {fmt_figure(r.win_high)}]{star}"
        lines.append(
            f"{r.round:>5} {r.labels:>6} {r.outcome:<9} {fmt_figure(r.mean_top1):>6} {fmt_figure(r.mean_macro_f1):>6} "
            + " ".join(f"{fmt_figure(r.top1.get(g)):>8}" for g in groups)
            + f" {fmt_figure(r.challenger_mean_top1) if r.round else '':>10}"
            + f" {fmt_figure(r.challenger_mean_macro_f1) if r.round else '':>8} {win:>28} {r.seconds:>6.0f}"
        )
    lines.append("(* the gate's significant win)")
    return "\n".join(lines)


def write_report(
    results: list[ArmResult], config: dict[str, Any], out: Path, subtitle: str, seed_s: float, total_s: float
) -> str:
    """figures.json and both PNGs from the runs finished so far; returns the across-seed tables."""
    from tests.benchmarks import al_report

    runs = [asdict(r) for r in results]
    summary = al_report.spread(runs, config["budget"])
    gap_rows = al_report.gaps(runs, config["budget"])
    figures = {
        "configuration": config,
        "seed_training_s": round(seed_s, 1),
        "total_s": round(total_s, 1),
        "interval": "gap: 95% Student-t interval over routing seeds, paired by seed (tests/benchmarks/al_report.py)",
        "runs": runs,
        "summary": summary,
        "gaps": gap_rows,
    }
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    al_report.plot_curves(summary, out / "bench-active-learning.png", subtitle)
    if any(row["mean_top1"]["seeds"] for row in gap_rows):
        al_report.plot_gaps(gap_rows, out / "bench-active-learning-gap.png", subtitle)
    return al_report.spread_table(summary) + "\n\n" + al_report.gap_table(gap_rows)


# -- main ---------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="labelled set (labels.csv + images/)")
    parser.add_argument("--seed-size", type=int, default=200, help="products the seed model is trained on")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=50, help="labels (annotated products) per round, both arms")
    parser.add_argument("--chunk", type=int, help="pool products streamed per round (default: pool / rounds)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each retraining run")
    parser.add_argument("--seed-epochs", type=int, default=8, help="epochs of the seed model")
    parser.add_argument("--freeze-stages", type=int, default=7, help="frozen backbone stages (of 9), seed and runs")
    parser.add_argument("--replay-min-samples", type=int, default=1000)
    parser.add_argument("--holdout-size", type=int, help="use only this many holdout products (default: all)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated: uncertainty,random")
    parser.add_argument(
        "--routing-seeds",
        help="comma-separated routing seeds; each runs both arms (stream order, random routing's ranks); "
        "default 1,2,3 (--quick: 1,2)",
    )
    parser.add_argument("--seed-model", type=Path, help="reuse this seed bundle (seed.safetensors of an earlier run)")
    parser.add_argument("--service-timeout", type=float, default=900.0, help="seconds for each service to start")
    parser.add_argument("--quick", action="store_true", help="a tiny configuration that checks the harness")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-active-learning")
    args = parser.parse_args()
    if args.quick:
        args.seed_size, args.rounds, args.budget = 80, 2, 8
        args.chunk = args.chunk or 30
        args.epochs, args.seed_epochs = 1, 2
        args.holdout_size = args.holdout_size or 60
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "kafka"):  # one line per HTTP request / broker connection
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.data = data = args.data.resolve()
    if not (data / "labels.csv").is_file():
        print(f"skipped: {data}/labels.csv is absent (../shared/data/fashion-products is needed)", file=sys.stderr)
        return
    args.routing_seeds = args.routing_seeds or ("1,2" if args.quick else "1,2,3")
    arms = [a for a in args.arms.split(",") if a]
    if set(arms) - set(ARMS):
        parser.error(f"--arms: choose from {ARMS}")
    try:
        seeds = [int(x) for x in args.routing_seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--routing-seeds: comma-separated integers, not {args.routing_seeds!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error("--routing-seeds: at least one seed, none twice")

    from kafka_server import KafkaBroker
    from labelstudio_server import LabelStudioServer
    from postgres_server import PostgresServer

    columns, rows = read_labels(data)
    by_id = {r["id"]: r for r in rows}
    split = split_products(sorted(by_id), args.seed_size)
    if args.holdout_size:
        split.holdout = split.holdout[: args.holdout_size]
    args.chunk = args.chunk or len(split.pool) // args.rounds
    from learner.model.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(TAXONOMY)
    truth = {pid: {g.name: r.get(g.label_column, "") for g in taxonomy.classifier_groups} for pid, r in by_id.items()}
    titles = {pid: r.get("productDisplayName", "") for pid, r in by_id.items()}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out", "data")} | {
        "holdout_products": len(split.holdout),
        "seed_products": len(split.seed),
        "pool_products": len(split.pool),
        "routing_seeds": seeds,
    }
    print(f"configuration: {json.dumps(config)}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="shelfsight-bench-al-"))
    t0 = time.monotonic()

    seed_dir = write_labelled_dir(work / "seed", columns, [by_id[i] for i in split.seed], data / "images")
    base_dir = write_labelled_dir(
        work / "base", columns, [by_id[i] for i in split.seed + split.holdout], data / "images"
    )
    seed_started = time.monotonic()
    if args.seed_model:
        seed_bundle = args.seed_model.resolve()
        print(f"seed model: {seed_bundle} (not retrained)", file=sys.stderr)
    else:
        print(f"training the seed model on {len(split.seed)} products ...", file=sys.stderr)
        seed_bundle = train_seed(seed_dir, args.out / "seed.safetensors", args.seed_epochs, args.freeze_stages)
    seed_s = time.monotonic() - seed_started

    print("starting Kafka, PostgreSQL and Label Studio ...", file=sys.stderr)
    broker = KafkaBroker(work / "kafka", die_with_parent=True).start(timeout_s=args.service_timeout)
    pg = PostgresServer(work / "pg", durable=False)
    pg.start()
    label_studio = LabelStudioServer(work / "label-studio", document_root=data, die_with_parent=True)
    results: list[ArmResult] = []
    subtitle = (
        f"seed model {len(split.seed)} products; {args.rounds} rounds x {args.budget} labels, {args.chunk} products "
        f"streamed per round, {args.epochs} epochs; holdout {len(split.holdout)} products; routing seeds "
        f"{','.join(map(str, seeds))}"
    )
    try:
        label_studio.start(timeout_s=args.service_timeout)
        services = Services(broker.bootstrap, pg, label_studio)
        for seed in seeds:  # both arms of a seed before the next seed: an interrupted run keeps whole pairs
            for arm in arms:
                result = run_arm(arm, seed, args, services, split, truth, titles, seed_bundle, base_dir, work)
                results.append(result)
                print(table(result), file=sys.stderr, flush=True)
                write_report(results, config, args.out, subtitle, seed_s, time.monotonic() - t0)
    finally:
        label_studio.stop()
        broker.stop()
        pg.stop()

    total_s = time.monotonic() - t0
    for result in results:
        print(table(result))
        print()
    print(write_report(results, config, args.out, subtitle, seed_s, total_s))
    print(f"\nseed model {seed_s / 60:.1f} min; total {total_s / 60:.1f} min")
    print(f"written {args.out / 'figures.json'} and the PNGs beside it", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
