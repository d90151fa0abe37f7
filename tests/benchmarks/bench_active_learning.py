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
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))
DATA = ROOT.parent / "shared" / "data" / "fashion-products"
TAXONOMY = ROOT / "learner" / "taxonomies" / "fashion-products.yaml"
ARMS = ("uncertainty", "random")
WEBHOOK_SECRET = "bench-active-learning"
TOP_UP_AFTER_S = 60.0  # no run this long after a round's answers: check the trigger's count, top up if short

log = logging.getLogger("bench_active_learning")


@dataclass
class Split:
    holdout: list[str]
    seed: list[str]
    pool: list[str]


@dataclass
class RoundFigures:
    round: int
    labels: int
    outcome: str  # seed, promoted, rejected, failed
    champion: str
    mean_top1: float | None
    mean_macro_f1: float | None
    top1: dict[str, float | None]
    challenger_mean_top1: float | None = None
    challenger_mean_macro_f1: float | None = None
    gate: str = ""
    significant_win: bool | None = None  # the gate's paired bootstrap: challenger's mean top-1 convincingly higher
    win_low: float | None = None  # its interval of challenger - champion mean top-1
    win_difference: float | None = None
    win_high: float | None = None
    seconds: float = 0.0


@dataclass
class ArmResult:
    arm: str
    seed: int
    rounds: list[RoundFigures] = field(default_factory=list)
    seconds: float = 0.0


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


def stream_order(pool: list[str], routing_seed: int) -> list[str]:
    """The order the pool is streamed in for one routing seed (the same for both arms)."""
    return sorted(pool, key=lambda i: hashlib.sha256(f"stream:{routing_seed}:{i}".encode()).digest())


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


# -- one arm ------------------------------------------------------------------------------------------------------


@dataclass
class Services:
    """The Kafka broker, the PostgreSQL server and the Label Studio server shared by both arms."""

    bootstrap: str
    pg: Any
    label_studio: Any


def _figures(holdout: dict[str, Any] | None) -> tuple[float | None, float | None, dict[str, float | None]]:
    if not holdout:
        return None, None, {}
    summary = holdout.get("summary") or {}
    top1 = {g: m.get("top1") for g, m in (holdout.get("groups") or {}).items() if "top1" in m}
    return summary.get("mean_top1"), summary.get("mean_macro_f1"), top1


def run_arm(
    arm: str,
    routing_seed: int,
    args: argparse.Namespace,
    services: Services,
    split: Split,
    truth: dict[str, dict[str, str]],
    titles: dict[str, str],
    seed_bundle: Path,
    base_dir: Path,
    work: Path,
) -> ArmResult:
    import psycopg

    from connectors.db import RetrainingStore
    from connectors.db.store import ProductStore
    from connectors.kafka import ensure_topics
    from connectors.labelstudio import LabelStudioClient
    from learner.lifecycle.registry import ModelRegistry
    from learner.model.taxonomy import load_taxonomy
    from tests.benchmarks.annotator import ScriptedAnnotator
    from tests.daemon.harness import DaemonProcess, Db, daemon_env, produce, product_event, wait_until

    started = time.monotonic()
    result = ArmResult(arm, routing_seed)
    name = f"{arm}-seed{routing_seed}"
    arm_dir = work / name
    arm_dir.mkdir(parents=True)
    registry_dir = arm_dir / "registry"
    registry = ModelRegistry(registry_dir)
    seed_version = registry.register(seed_bundle, note="bench_active_learning seed").version
    registry.promote(seed_version, reason="seed model", actor="bench_active_learning")

    db_name = f"bench_al_{arm}_{routing_seed}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.pg.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    database_url = services.pg.url_for(db_name)
    topic = f"bench-al-{name}-{uuid.uuid4().hex[:6]}"
    ensure_topics(services.bootstrap, {topic: 2, f"{topic}.dlq": 1})
    project_title = f"bench active learning {name} {uuid.uuid4().hex[:6]}"
    taxonomy = load_taxonomy(TAXONOMY)
    min_products = args.budget  # the trigger counts products with new human values

    images = args.data / "images"
    common = {
        "SHELFSIGHT_REGISTRY_DIR": str(registry_dir),
        "SHELFSIGHT_RELOAD_INTERVAL_S": "1",
        "SHELFSIGHT_LOG_LEVEL": "WARNING",
        "SHELFSIGHT_REVIEW__ENABLED": "true",
        "SHELFSIGHT_REVIEW__ROUTING": arm,
        "SHELFSIGHT_REVIEW__AUDIT_RATE": "1.0" if arm == "random" else "0.0",
        "SHELFSIGHT_REVIEW__AUDIT_SEED": str(routing_seed),
        "SHELFSIGHT_REVIEW__MAX_PER_HOUR": "1000000",
        "SHELFSIGHT_REVIEW__MAX_PER_DAY": "1000000",
        "SHELFSIGHT_REVIEW__LABEL_STUDIO_URL": services.label_studio.url,
        "SHELFSIGHT_REVIEW__LABEL_STUDIO_TOKEN": services.label_studio.token,
        "SHELFSIGHT_REVIEW__PROJECT_TITLE": project_title,
        "SHELFSIGHT_REVIEW__LOCAL_FILES_ROOT": str(args.data),
        "SHELFSIGHT_REVIEW__WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SHELFSIGHT_REVIEW__SEND_INTERVAL_S": "1",
        "SHELFSIGHT_REVIEW__SEND_BATCH": "100",
        "SHELFSIGHT_REVIEW__POLL_INTERVAL_S": "5",
        "SHELFSIGHT_LEARNER__REGISTRY_DIR": str(registry_dir),
        "SHELFSIGHT_LEARNER__WORK_DIR": str(arm_dir / "learner"),
        "SHELFSIGHT_LEARNER__BASE_DATA": str(base_dir),
        "SHELFSIGHT_LEARNER__BASE_GROUP_COLUMN": "id",
        "SHELFSIGHT_LEARNER__INTERVAL_HOURS": "10000",  # only the corrections trigger fires during the benchmark
        "SHELFSIGHT_LEARNER__CHECK_INTERVAL_S": "3",
        "SHELFSIGHT_LEARNER__MIN_CORRECTED_PRODUCTS": str(min_products),
        "SHELFSIGHT_LEARNER__EPOCHS": str(args.epochs),
        "SHELFSIGHT_LEARNER__FREEZE_STAGES": str(args.freeze_stages),
        "SHELFSIGHT_LEARNER__PATIENCE": "0",
        "SHELFSIGHT_LEARNER__THREADS": "2",
        "SHELFSIGHT_LEARNER__REPLAY_MIN_SAMPLES": str(args.replay_min_samples),
        "SHELFSIGHT_LEARNER__BOOTSTRAP_SAMPLES": "1000",
        # a fixed holdout for every run (the split above): no floor, a cap above the data
        "SHELFSIGHT_LEARNER__HOLDOUT_MIN_PRODUCTS": "0",
        "SHELFSIGHT_LEARNER__HOLDOUT_MAX_PRODUCTS": str(10**9),
    }
    env = daemon_env(
        bootstrap=services.bootstrap,
        topic=topic,
        database_url=database_url,
        model_path=seed_bundle,
        file_root=images,
        group_id=f"bench-al-{name}",
        extra=common,
    )
    db = Db(database_url)
    learner_store = RetrainingStore(ProductStore(database_url, pool_size=1))  # what the scheduler's trigger counts
    daemon = DaemonProcess(env, arm_dir / "daemon.log")
    reviewer = DaemonProcess(
        {**env, "SHELFSIGHT_REVIEW__WEBHOOK_PORT": str(_free_port())}, arm_dir / "review.log", ("review", "run")
    )
    learner = DaemonProcess(env, arm_dir / "learn.log", ("learn",))
    processes = [daemon, reviewer, learner]
    client = LabelStudioClient(services.label_studio.url, services.label_studio.token, timeout_s=60)
    annotator = ScriptedAnnotator(client, taxonomy, truth)
    try:
        daemon.start().wait_ready(timeout_s=args.service_timeout)  # migrates the database first
        reviewer.start()
        learner.start().wait_ready(timeout_s=args.service_timeout)
        time.sleep(3)  # consumer group join and partition assignment

        def tail() -> str:
            return "\n".join(f"--- {p.log_path.name}\n{p.log_tail(25)}" for p in processes)

        def check_alive() -> None:
            for p in processes:
                if not p.alive:
                    raise SystemExit(f"{name}: {' '.join(p.command)} exited:\n{p.log_tail(60)}")

        project_id = _project_id(client, project_title, wait_s=args.service_timeout, on_fail=tail)
        labels_used = 0
        seed_row: RoundFigures | None = None
        pool = stream_order(split.pool, routing_seed)
        for rnd in range(1, args.rounds + 1):
            round_started = time.monotonic()
            chunk, pool = pool[: args.chunk], pool[args.chunk :]
            if not chunk:
                raise SystemExit(f"{name}: the pool is exhausted before round {rnd}: lower --chunk or --rounds")
            done_before = db.processed()
            produce(
                services.bootstrap,
                topic,
                [product_event(pid, images / f"{pid}.jpg", title=titles.get(pid, "")) for pid in chunk],
            )
            with tqdm(total=len(chunk), desc=f"{name} round {rnd}: tagging", unit="event", leave=False) as bar:
                seen = 0
                deadline = time.monotonic() + 1800
                while seen < len(chunk):
                    check_alive()
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name}: tagging timed out\n{tail()}")
                    time.sleep(0.5)
                    now = db.processed() - done_before
                    bar.update(now - seen)
                    seen = now
            wait_until(lambda: _outbox_pending(db) == 0, 600, f"{name}: the outbox to reach Label Studio", tail)
            time.sleep(1.0)  # the last import's response
            runs_before = _completed_runs(db)
            answered = annotator.annotate(project_id, args.budget)
            labels_used += len(answered)
            values = sum(a.groups for a in answered)
            log.info("%s round %d: %d tasks answered (%d values)", name, rnd, len(answered), values)
            if len(answered) < args.budget or any(a.groups == 0 for a in answered):
                raise SystemExit(
                    f"{name} round {rnd}: only {len(answered)} tasks ({values} values) could be answered, "
                    f"{args.budget} products with at least one value needed: raise --chunk"
                )
            with tqdm(desc=f"{name} round {rnd}: retraining", unit="s", leave=False) as bar:
                deadline = time.monotonic() + 3600
                top_up_at = time.monotonic() + TOP_UP_AFTER_S
                while _completed_runs(db) <= runs_before:
                    check_alive()
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name}: no retraining run finished\n{tail()}")
                    if time.monotonic() > top_up_at and not _run_in_progress(db):
                        # The trigger counts products with new human values. Rounds used to fall short because the
                        # review poller withdrew answers the webhook had recorded after the poller's listing (fixed
                        # in AnnotationApplier.reconcile), and because its offset-paged listing skipped a task an
                        # annotator's edit or answer shifted across a page boundary while the webhook delivery was
                        # lost (fixed: keyset paging; the periodic full reconcile is the backstop). Should the
                        # count fall short again, this warns and answers one more task rather than stall.
                        pending = learner_store.count_corrected_products(_last_until(learner_store))
                        extra = annotator.annotate(project_id, 1) if pending < min_products else []
                        labels_used += len(extra)
                        log.warning(
                            "%s round %d: %d products with new human values, the trigger needs %d: %s",
                            name,
                            rnd,
                            pending,
                            min_products,
                            "answered one more task" if extra else "waiting",
                        )
                        top_up_at = time.monotonic() + TOP_UP_AFTER_S
                    time.sleep(2)
                    bar.update(2)
            run = _last_run(db)
            labels_used = _labels_trained_on(run, labels_used)
            detail = run["detail"] or {}
            champ_top1, champ_f1, champ_groups = _figures(detail.get("champion_holdout"))
            chall_top1, chall_f1, chall_groups = _figures(detail.get("challenger_holdout"))
            if seed_row is None:
                seed_row = RoundFigures(0, 0, "seed", seed_version, champ_top1, champ_f1, champ_groups)
                result.rounds.append(seed_row)
            promoted = run["status"] == "promoted"
            champion = str(run["challenger_version"] if promoted else run["champion_version"])
            if promoted:  # the daemon serves the new champion before the next round's products arrive
                wait_until(
                    lambda v=champion: any(f'version="{v}"' in k for k in daemon.metrics()),  # type: ignore[misc]
                    300,
                    f"{name}: the daemon to reload {champion}",
                    tail,
                )
            reasons = detail.get("reasons") or [str(detail.get("error") or detail.get("message") or "")]
            boot = detail.get("bootstrap") or {}
            row = RoundFigures(
                round=rnd,
                labels=labels_used,
                outcome=str(run["status"]),
                champion=champion,
                mean_top1=chall_top1 if promoted else champ_top1,
                mean_macro_f1=chall_f1 if promoted else champ_f1,
                top1=chall_groups if promoted else champ_groups,
                challenger_mean_top1=chall_top1,
                challenger_mean_macro_f1=chall_f1,
                gate="; ".join(str(r) for r in reasons),
                significant_win=detail.get("significant_win"),
                win_low=boot.get("low"),
                win_difference=boot.get("difference"),
                win_high=boot.get("high"),
                seconds=round(time.monotonic() - round_started, 1),
            )
            result.rounds.append(row)
            print(_row_line(name, row), file=sys.stderr, flush=True)
    finally:
        for p in reversed(processes):
            if p.alive:
                try:
                    p.terminate(timeout_s=60)
                except Exception:
                    p.ensure_stopped()
        db.engine.dispose()
        learner_store.store.close()
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _free_port() -> int:
    from tests.daemon.harness import free_port

    return free_port()


def _project_id(client: Any, title: str, wait_s: float, on_fail: Callable[[], str]) -> int:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for project in client.sdk.projects.list():
            if project.title == title:
                return int(project.id)
        time.sleep(1)
    raise SystemExit(f"the review worker did not create the Label Studio project {title!r}\n{on_fail()}")


def _outbox_pending(db: Any) -> int:
    try:
        return int(db.scalar("SELECT COUNT(*) FROM review_outbox WHERE status = 'pending'") or 0)
    except Exception:
        return 1


def _run_in_progress(db: Any) -> bool:
    return bool(db.scalar("SELECT COUNT(*) FROM learner_runs WHERE status = 'running'"))


def _last_until(learner_store: Any) -> Any:
    last = learner_store.last_completed_run()
    return last.corrections_until if last else None


def _labels_trained_on(run: dict[str, Any], answered: int) -> int:
    """The annotated products the run trained on (its data snapshot), else the number of tasks answered so far."""
    corrections = ((run["detail"] or {}).get("data") or {}).get("corrections") or {}
    return int(corrections.get("images") or answered)


def _completed_runs(db: Any) -> int:
    return int(db.scalar("SELECT COUNT(*) FROM learner_runs WHERE status IN ('promoted', 'rejected', 'failed')") or 0)


def _last_run(db: Any) -> dict[str, Any]:
    row = db.rows(
        "SELECT status, champion_version, challenger_version, detail FROM learner_runs "
        "WHERE status IN ('promoted', 'rejected', 'failed') ORDER BY id DESC LIMIT 1"
    )[0]
    detail = row[3] if isinstance(row[3], dict) else json.loads(str(row[3] or "{}"))
    return {"status": row[0], "champion_version": row[1], "challenger_version": row[2], "detail": detail}


# -- report -------------------------------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def _row_line(arm: str, r: RoundFigures) -> str:
    return (
        f"[{arm}] round {r.round}: {r.labels} labels, {r.outcome}, mean top-1 {_fmt(r.mean_top1)}, "
        f"mean macro-F1 {_fmt(r.mean_macro_f1)} ({r.seconds:.0f} s)"
    )


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
            win = f"{r.win_difference:+.3f} [{_fmt(r.win_low)}, {_fmt(r.win_high)}]{star}"
        lines.append(
            f"{r.round:>5} {r.labels:>6} {r.outcome:<9} {_fmt(r.mean_top1):>6} {_fmt(r.mean_macro_f1):>6} "
            + " ".join(f"{_fmt(r.top1.get(g)):>8}" for g in groups)
            + f" {_fmt(r.challenger_mean_top1) if r.round else '':>10}"
            + f" {_fmt(r.challenger_mean_macro_f1) if r.round else '':>8} {win:>28} {r.seconds:>6.0f}"
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
