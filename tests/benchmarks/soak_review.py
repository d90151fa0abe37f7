"""Soak test of the review loop: annotators' answers must never be lost, duplicated or left stale, whatever happens to
the review worker and to Label Studio.

    .venv/bin/python -m tests.benchmarks.soak_review [--tasks 400] [--answered-while-down 250] [--outage 20]
        [--kills 2] [--out runs/soak-review]
    .venv/bin/python -m tests.benchmarks.soak_review --measure-reconcile 2000   # cost of one full reconcile

Real services only: PostgreSQL and Label Studio started by deploy/dev (PostgresServer, LabelStudioServer), the
review worker as a subprocess (`shelfsight review run`, configured by environment variables, webhook and polling),
scripted annotators acting through label-studio-sdk. The scenario (`run_soak`):

1. `tasks` routed products are written to the outbox (as the enrichment daemon would, with the model's values);
   the worker sends them all to Label Studio.
2. The worker is SIGKILLed. Annotators answer `answered_while_down` tasks (more than 100), skip a few, edit and
   delete a few: every webhook delivery is lost.
3. The worker restarts; while it catches up (its first poll lists more than one page of changed tasks), an
   annotator goes back over their first answers and edits them (`Editor`).
4. The worker is SIGKILLed again, annotators answer `answered_between_kills` more, and the worker's catch-up is
   SIGKILLed `kills` times mid-sync and restarted (new products are routed before each restart: sending must
   resume too).
5. Label Studio is stopped for `outage` seconds while the worker runs and products are routed, then started again;
   annotators answer, edit and delete more.
6. Once the worker has caught up it is stopped, and one full reconcile runs (`FullReconcile`): it must recover
   nothing (webhook and polls lost nothing). Then, product by product: Label Studio's latest answers ==
   `review_annotations` (active rows) == human values in `product_attributes`; every product has one task;
   every annotation one active revision per attribute.

Prints the counts (and writes `soak.json` into `--out`); exits 1 when anything was lost, duplicated or stale.
The test suite runs a short variant (tests/daemon/test_review_recovery.py); this module holds the scenario for
both.

`--measure-reconcile N` instead creates N tasks (a third answered) and measures what one full reconcile costs
Label Studio: requests and response bytes, counted by an httpx event hook on the client's own connection.

What it must not do: read the database from the annotators' side, or mock any service.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.benchmarks.soak_actors import (
    CC0_DIR,
    ROOT,
    Annotators,
    Editor,
    WorkerProcess,
    route_products,
    taxonomy_of,
    worker_env,
)
from tests.benchmarks.soak_checks import compare, outbox_counts, recorded_annotations, soft_wait, wait_until
from tests.benchmarks.soak_reconcile_cost import measure_reconcile

log = logging.getLogger("soak_review")


@dataclass
class SoakConfig:
    tasks: int = 400
    answered_while_down: int = 250
    skipped_while_down: int = 5
    edits_while_down: int = 10
    deletions_while_down: int = 5
    answered_between_kills: int = 100
    kills: int = 2
    outage_s: float = 20.0
    answered_after_outage: int = 20
    new_per_restart: int = 5
    poll_interval_s: float = 1.0
    catch_up_timeout_s: float = 180.0
    seed: int = 0


@dataclass
class SoakCounts:
    tasks: int = 0
    answered: int = 0
    answered_while_down: int = 0
    skipped: int = 0
    edits: int = 0
    edits_during_catch_up: int = 0
    deletions: int = 0
    kills: int = 0
    kills_mid_sync: int = 0
    outage_s: float = 0.0
    resend_after_restart_s: list[float] = field(default_factory=list)
    label_studio_annotations: int = 0
    active_annotations: int = 0
    human_values: int = 0
    products_checked: int = 0
    recovered_by_final_reconcile: int = 0
    recovered_by_worker_reconcile: int = 0  # by the reconcile that follows a catch-up: polls had missed them too
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.recovered_by_final_reconcile == self.recovered_by_worker_reconcile == 0


# --------------------------------------------------------------------------------------------------- the scenario


def run_soak(
    config: SoakConfig,
    *,
    database_url: str,
    label_studio: Any,
    bundle: Path,
    work: Path,
    free_port: Callable[[], int],
) -> SoakCounts:
    """The scenario of the module docstring. `label_studio`: a running deploy/dev LabelStudioServer (stopped and
    started here for the outage); `database_url`: an empty PostgreSQL (or SQLite) database."""
    from connectors.db import ProductStore
    from connectors.labelstudio import LabelStudioClient

    started = time.monotonic()
    rng = random.Random(config.seed)
    counts = SoakCounts(outage_s=config.outage_s)
    taxonomy = taxonomy_of(bundle)
    store = ProductStore(database_url)
    store.migrate()
    store.close()
    title = f"soak-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        database_url=database_url,
        bundle=bundle,
        label_studio_url=label_studio.url,
        token=label_studio.token,
        project_title=title,
        webhook_port=free_port(),
        poll_interval_s=config.poll_interval_s,
    )
    log_path = work / "review-worker.log"
    worker = WorkerProcess(env, log_path)
    tail = worker.log_tail
    client = LabelStudioClient(label_studio.url, label_studio.token, timeout_s=30)
    routed = config.tasks

    def all_sent() -> bool:
        c = outbox_counts(database_url)
        return c.get("sent", 0) == routed and c.get("pending", 0) == 0

    try:
        # 1. routed products reach Label Studio
        route_products(database_url, taxonomy, config.tasks, rng, "a")
        worker.start()
        wait_until(all_sent, 120, "every routed product to reach Label Studio", tail)
        project_id = client.ensure_project(title, _label_config(taxonomy))
        annotators = Annotators(client, taxonomy, project_id, rng)

        # 2. the worker is down while annotators work: every webhook delivery is lost
        worker.kill()
        counts.kills += 1
        answered, skipped = annotators.answer_tasks(config.answered_while_down, skips=config.skipped_while_down)
        counts.answered_while_down, counts.skipped = answered, skipped
        for _ in range(config.edits_while_down):
            counts.edits += annotators.edit_one()
        for _ in range(config.deletions_while_down):
            counts.deletions += annotators.delete_one()
        log.info("worker down: %d answered, %d skipped, %d edited, %d deleted", answered, skipped, counts.edits,
                 counts.deletions)  # fmt: skip

        # 3. the catch-up (its first poll lists more than a page of changed tasks) while an annotator edits
        editor = Editor(annotators, among=list(annotators.answered)[: max(10, len(annotators.answered) // 2)])
        editor.start()
        expected = len(annotators.answered) + skipped  # deleted while down: never recorded, nothing to withdraw
        route_products(database_url, taxonomy, config.new_per_restart, rng, "r0")
        routed += config.new_per_restart
        restarted = time.monotonic()
        worker.start()
        wait_until(all_sent, 120, "the restarted worker to send the new products", tail)
        counts.resend_after_restart_s.append(round(time.monotonic() - restarted, 2))
        soft_wait(lambda: recorded_annotations(database_url) >= expected, 120, "the catch-up", worker)
        time.sleep(2 * config.poll_interval_s)  # a poll or two after the catch-up, with the editor still at work
        counts.edits_during_catch_up = editor.stop()
        counts.edits += counts.edits_during_catch_up

        # 4. more answers while the worker is down again, and its catch-up SIGKILLed `kills` times mid-sync (new
        # products are routed before each restart: sending resumes too)
        worker.kill()
        counts.kills += 1
        between, _ = annotators.answer_tasks(config.answered_between_kills)
        for _ in range(3):
            counts.edits += annotators.edit_one()
        expected += between
        for kill in range(config.kills + 1):
            route_products(database_url, taxonomy, config.new_per_restart, rng, f"k{kill}")
            routed += config.new_per_restart
            restarted = time.monotonic()
            worker.start()
            if kill == config.kills:
                wait_until(all_sent, 120, "the restarted worker to send the new products", tail)
                counts.resend_after_restart_s.append(round(time.monotonic() - restarted, 2))
                break
            target = recorded_annotations(database_url) + 1  # the first answer of the catch-up is in: kill it
            try:
                wait_until(
                    lambda t=target: recorded_annotations(database_url) >= t, 120, "the catch-up", tail, step_s=0.02
                )
            except AssertionError:
                log.warning("the catch-up did not reach %d annotations before the kill", target)
            counts.kills_mid_sync += int(recorded_annotations(database_url) < expected)
            worker.kill()
            counts.kills += 1
        soft_wait(lambda: recorded_annotations(database_url) >= expected, 120, "the catch-up after the kills", worker)

        # 5. Label Studio down while the worker runs and products keep being routed
        label_studio.stop()
        route_products(database_url, taxonomy, config.new_per_restart, rng, "outage")
        routed += config.new_per_restart
        time.sleep(config.outage_s)
        label_studio.start()
        wait_until(all_sent, 120, "the products routed during the outage to reach Label Studio", tail)
        more, _ = annotators.answer_tasks(config.answered_after_outage)
        counts.answered = counts.answered_while_down + between + more
        for _ in range(3):
            counts.edits += annotators.edit_one()
        counts.deletions += annotators.delete_one()

        # 6. caught up: the three stores agree; then stop, reconcile once, and check again
        def agreed() -> bool:
            return not compare(database_url, client, project_id, taxonomy)[0]

        try:
            wait_until(agreed, config.catch_up_timeout_s, "the database to agree with Label Studio", tail)
        except AssertionError:
            log.error("the database did not agree with Label Studio within %.0fs", config.catch_up_timeout_s)
            worker.dump_stacks()
            time.sleep(0.5)  # the dump is written before the worker is stopped
        assert worker.terminate() == 0, tail()
        worker_log = log_path.read_text(errors="replace")
        counts.recovered_by_worker_reconcile = worker_log.count("reconcile recovered annotation")
        counts.recovered_by_final_reconcile = _final_reconcile(env, database_url)
        problems, found = compare(database_url, client, project_id, taxonomy)
        counts.problems = problems
        counts.tasks = found["products"]
        counts.label_studio_annotations = found["label_studio_annotations"]
        counts.active_annotations = found["active_annotations"]
        counts.human_values = found["human_values"]
        counts.products_checked = found["products"]
    finally:
        worker.kill()
        if not label_studio.is_running():
            label_studio.start()
    counts.seconds = round(time.monotonic() - started, 1)
    return counts


def _label_config(taxonomy: Any) -> str:
    from learner.review.tasks import label_config

    return str(label_config(taxonomy))


def _final_reconcile(env: dict[str, str], database_url: str) -> int:
    """One full reconcile in this process (the worker is stopped): how many answers it had to recover."""
    from daemon.config import Settings
    from daemon.review.worker import ReviewWorkerOptions, build_review_worker

    names = {k: v for k, v in env.items() if k.startswith("SHELFSIGHT_")}
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    try:
        worker = build_review_worker(Settings(), worker_options=ReviewWorkerOptions(webhook_port=None))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        assert worker.reconciler is not None
        report = worker.reconciler.run_once()
        return report.recovered + report.withdrawn
    finally:
        worker.store.store.close()


# --------------------------------------------------------------------------------------------------- CLI


def _services(work: Path) -> Iterator[tuple[Any, str, Path]]:
    from labelstudio_server import LabelStudioServer  # type: ignore[import-not-found]
    from postgres_server import PostgresServer  # type: ignore[import-not-found]

    pg = PostgresServer(work / "pg", durable=False).start()
    ls = LabelStudioServer(work / "ls", document_root=CC0_DIR, die_with_parent=True).start()
    try:
        import psycopg

        name = f"soak_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        yield ls, pg.url_for(name), _bundle(work)
    finally:
        ls.stop()
        pg.stop()


def _bundle(work: Path) -> Path:
    import torch

    from learner.model.bundle import ModelBundle
    from learner.model.classifier import AttributeClassifier
    from learner.model.taxonomy import load_taxonomy

    torch.manual_seed(0)
    taxonomy = load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")
    path = work / "soak.safetensors"
    ModelBundle("soak-model", taxonomy, AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=True)).save(
        path
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    defaults = SoakConfig()
    parser.add_argument("--tasks", type=int, default=defaults.tasks)
    parser.add_argument("--answered-while-down", type=int, default=defaults.answered_while_down)
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--outage", type=float, default=defaults.outage_s, help="seconds Label Studio is stopped")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--measure-reconcile", type=int, default=0, metavar="N", help="measure a reconcile of N tasks")
    parser.add_argument("--out", type=Path, default=Path("runs/soak-review"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(ROOT / "deploy" / "dev"))
    from devprocess import free_port  # type: ignore[import-not-found]

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shelfsight-soak-") as tmp:
        services = _services(Path(tmp))
        ls, url, bundle = next(services)
        try:
            if args.measure_reconcile:
                cost = measure_reconcile(ls, url, bundle, args.measure_reconcile)
                print(json.dumps({**asdict(cost), "per_10k_tasks": cost.per_10k()}, indent=2))
                return 0
            config = SoakConfig(
                tasks=args.tasks,
                answered_while_down=args.answered_while_down,
                kills=args.kills,
                outage_s=args.outage,
                seed=args.seed,
            )
            counts = run_soak(
                config, database_url=url, label_studio=ls, bundle=bundle, work=args.out, free_port=free_port
            )
        finally:
            services.close()
    summary = {**asdict(counts), "problems": counts.problems[:50], "problem_count": len(counts.problems)}
    (args.out / "soak.json").write_text(json.dumps(summary, indent=2))
    for key, value in summary.items():
        if key != "problems":
            print(f"{key:32} {value}")
    for problem in counts.problems[:20]:
        print("PROBLEM", problem)
    print("OK: nothing lost, duplicated or stale" if counts.ok else "FAILED")
    return 0 if counts.ok else 1


if __name__ == "__main__":
    sys.exit(main())
