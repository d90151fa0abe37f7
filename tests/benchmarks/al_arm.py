"""One (arm, routing seed) of the active-learning benchmark (bench_active_learning.py, whose docstring holds the
protocol): fresh state (a database, a topic, a Label Studio project, a registry with the seed model as champion),
the daemon, the review worker and the learner as subprocesses, and the rounds of streaming, routing, answering and
retraining, each read back as `RoundFigures`.

What it must not do: train the seed model, write the report, or mock a service.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
TAXONOMY = ROOT / "learner" / "taxonomies" / "fashion-products.yaml"
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


def stream_order(pool: list[str], routing_seed: int) -> list[str]:
    """The order the pool is streamed in for one routing seed (the same for both arms)."""
    return sorted(pool, key=lambda i: hashlib.sha256(f"stream:{routing_seed}:{i}".encode()).digest())


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
    from connectors.kafka_producers import ensure_topics
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


def fmt_figure(v: float | None) -> str:
    """A figure with three decimals, or a dash when there is none."""
    return "  -  " if v is None else f"{v:.3f}"


def _row_line(arm: str, r: RoundFigures) -> str:
    return (
        f"[{arm}] round {r.round}: {r.labels} labels, {r.outcome}, mean top-1 {fmt_figure(r.mean_top1)}, "
        f"mean macro-F1 {fmt_figure(r.mean_macro_f1)} ({r.seconds:.0f} s)"
    )
