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
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[2]
CC0_DIR = ROOT / "deploy" / "demo" / "clothing-cc0"
SECRET = "soak-webhook-secret"
WORKER_ID = "soak-review-worker"

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


# --------------------------------------------------------------------------------------------------- the worker


class WorkerProcess:
    """`shelfsight review run` as a subprocess, configured by environment variables like an operator would."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "review", "run"], env=self.env, cwd=ROOT, stdout=out, stderr=out
            )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def dump_stacks(self) -> None:
        """Every thread's stack into the worker's log (`shelfsight review run` registers SIGUSR1 for it)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGUSR1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def worker_env(
    *,
    database_url: str,
    bundle: Path,
    label_studio_url: str,
    token: str,
    project_title: str,
    webhook_port: int,
    poll_interval_s: float,
) -> dict[str, str]:
    env = {
        "SHELFSIGHT_DATABASE_URL": database_url,
        "SHELFSIGHT_MODEL_PATH": str(bundle),
        "SHELFSIGHT_FETCH__FILE_ROOT": str(CC0_DIR / "images"),
        "SHELFSIGHT_LOG_LEVEL": "INFO",
        "SHELFSIGHT_REVIEW__LABEL_STUDIO_URL": label_studio_url,
        "SHELFSIGHT_REVIEW__LABEL_STUDIO_TOKEN": token,
        "SHELFSIGHT_REVIEW__PROJECT_TITLE": project_title,
        "SHELFSIGHT_REVIEW__LOCAL_FILES_ROOT": str(CC0_DIR),
        "SHELFSIGHT_REVIEW__WEBHOOK_SECRET": SECRET,
        "SHELFSIGHT_REVIEW__WEBHOOK_PORT": str(webhook_port),
        "SHELFSIGHT_REVIEW__SEND_INTERVAL_S": "0.3",
        "SHELFSIGHT_REVIEW__POLL_INTERVAL_S": str(poll_interval_s),
        "SHELFSIGHT_REVIEW__RETRY_INITIAL_S": "0.5",
        "SHELFSIGHT_REVIEW__RETRY_MAX_S": "2",
        "SHELFSIGHT_REVIEW__WORKER_ID": WORKER_ID,
        "SHELFSIGHT_REVIEW__HEARTBEAT_INTERVAL_S": "0.5",
        "SHELFSIGHT_REVIEW__CLAIM_STALE_S": "3",
        # the soak checks that webhooks and polls alone lose nothing: the full reconcile runs once, at the end
        "SHELFSIGHT_REVIEW__RECONCILE_AT_START": "false",
        "SHELFSIGHT_REVIEW__RECONCILE_INTERVAL_S": "1e9",
    }
    return env


# --------------------------------------------------------------------------------------------------- products


def taxonomy_of(bundle: Path) -> Any:
    from learner.model.bundle import read_manifest
    from learner.model.taxonomy import Taxonomy

    return Taxonomy.from_dict(read_manifest(bundle)["taxonomy"], source=str(bundle))


def route_products(database_url: str, taxonomy: Any, n: int, rng: random.Random, tag: str) -> list[str]:
    """`n` products written with their model values and a review outbox row, as the enrichment daemon does."""
    from connectors.db import ProductStore
    from connectors.records import AttributeValue, ProductResult

    images = sorted((CC0_DIR / "images").glob("*.jpg"))
    groups = list(taxonomy.classifier_groups)
    store = ProductStore(database_url)
    store.migrate()
    results, ids = [], []
    for i in range(n):
        product_id = f"SOAK-{tag}-{i:04d}"
        image = images[rng.randrange(len(images))]
        values = {g.name: rng.choice(list(g.values)) for g in groups}
        results.append(
            ProductResult(
                product_id=product_id,
                title=f"Soak item {tag}-{i}",
                category_hint=None,
                event_id=f"e-{product_id}",
                image_url=image.as_uri(),
                image_digest=f"soak-{product_id}",
                model_version="soak-model",
                attributes=[AttributeValue(g, v, 0.4) for g, v in values.items()],
                source="soak",
                review={
                    "reason": "low_confidence",
                    "priority": rng.random(),
                    "model_values": {g: {"value": v, "confidence": 0.4, "box": None} for g, v in values.items()},
                },
            )
        )
        ids.append(product_id)
    store.write_results(results)
    store.close()
    return ids


# --------------------------------------------------------------------------------------------------- annotators


class Annotators:
    """Scripted annotators acting through the SDK: answer, skip, edit and delete, as people working the queue."""

    def __init__(self, client: Any, taxonomy: Any, project_id: int, rng: random.Random) -> None:
        self.client = client
        self.taxonomy = taxonomy
        self.project_id = project_id
        self.rng = rng
        self.answered: dict[int, int] = {}  # annotation id -> task id (live, not skips)
        self.done_tasks: set[int] = set()
        self.lock = threading.Lock()

    def answer(self, product_id: str) -> list[dict[str, Any]]:
        from learner.review.tasks import answer_result

        values = {g.name: self.rng.choice(list(g.values)) for g in self.taxonomy.classifier_groups}
        return answer_result(self.taxonomy, values)

    def open_tasks(self) -> list[dict[str, Any]]:
        tasks = list(self.client.tasks_updated_since(self.project_id, None))
        return [t for t in tasks if int(t["id"]) not in self.done_tasks and not t.get("annotations")]

    def answer_tasks(self, n: int, *, skips: int = 0) -> tuple[int, int]:
        todo = self.open_tasks()[: n + skips]
        answered = skipped = 0
        for i, task in enumerate(todo):
            task_id = int(task["id"])
            if i < skips:
                self.client.sdk.annotations.create(id=task_id, result=[], was_cancelled=True)
                skipped += 1
            else:
                created = self.client.sdk.annotations.create(
                    id=task_id, result=self.answer(str(task["data"]["product_id"])), lead_time=3.0
                )
                with self.lock:
                    self.answered[int(created.id)] = task_id
                answered += 1
            self.done_tasks.add(task_id)
        return answered, skipped

    def edit_one(self, among: list[int] | None = None) -> bool:
        with self.lock:
            choices = [a for a in (among or sorted(self.answered)) if a in self.answered]
            if not choices:
                return False
            annotation_id = self.rng.choice(choices)
        self.client.sdk.annotations.update(id=annotation_id, result=self.answer(""))
        return True

    def delete_one(self) -> bool:
        with self.lock:
            if not self.answered:
                return False
            annotation_id = self.rng.choice(sorted(self.answered))
            del self.answered[annotation_id]
        self.client.sdk.annotations.delete(id=annotation_id)
        return True


class Editor(threading.Thread):
    """An annotator going back over their first answers (`among`, in the order given) during the worker's catch-up,
    editing each once, then editing among them at random until stopped. Each first edit moves a task from the front
    of the changed-task listing to its end: a listing that pages by offset then skips the task at the next page's
    boundary, an answer nothing else would bring back (its webhook was lost while the worker was down) but the
    full reconcile."""

    def __init__(self, annotators: Annotators, among: list[int], pause_s: float = 0.15) -> None:
        super().__init__(name="soak-editor", daemon=True)
        self.annotators = annotators
        self.among = among
        self.pause_s = pause_s
        self.stop_event = threading.Event()
        self.edits = 0
        self.errors = 0

    def run(self) -> None:
        first_pass = list(self.among)
        while not self.stop_event.wait(self.pause_s):
            try:
                if first_pass:
                    if self.annotators.edit_one([first_pass.pop(0)]):
                        self.edits += 1
                elif self.annotators.edit_one(self.among):
                    self.edits += 1
            except Exception as exc:  # Label Studio busy: an annotator would just try again
                self.errors += 1
                log.debug("edit failed: %s", exc)

    def stop(self) -> int:
        self.stop_event.set()
        self.join(timeout=30)
        return self.edits


# --------------------------------------------------------------------------------------------------- checks


def label_studio_state(client: Any, project_id: int) -> list[dict[str, Any]]:
    return list(client.tasks_updated_since(project_id, None))


def database_rows(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def compare(database_url: str, client: Any, project_id: int, taxonomy: Any) -> tuple[list[str], dict[str, int]]:
    """Label Studio's latest answers against review_annotations and product_attributes, product by product.
    Returns the problems (empty: all three agree) and counts."""
    from connectors.labelstudio import parse_timestamp

    groups = {g.name for g in taxonomy.classifier_groups}
    problems: list[str] = []
    tasks = label_studio_state(client, project_id)
    per_product: Counter[str] = Counter(str(t["data"]["product_id"]) for t in tasks)
    problems += [f"product {p} has {n} tasks in Label Studio" for p, n in per_product.items() if n > 1]
    ls_answers: dict[int, dict[str, str]] = {}  # annotation id -> attribute -> value
    latest: dict[tuple[str, str], tuple[datetime, int, str]] = {}
    annotations = 0
    for task in tasks:
        product = str(task["data"]["product_id"])
        for a in task.get("annotations") or []:
            annotations += 1
            if a.get("was_cancelled"):
                ls_answers[int(a["id"])] = {"*": "skipped"}
                continue
            values = {
                r["from_name"]: r["value"]["choices"][0]
                for r in a.get("result") or []
                if r.get("type") == "choices" and r["from_name"] in groups
            }
            ls_answers[int(a["id"])] = values
            when = parse_timestamp(a.get("updated_at")) or datetime.min.replace(tzinfo=UTC)
            for attribute, value in values.items():
                key = (product, attribute)
                if key not in latest or (when, int(a["id"])) > latest[key][:2]:
                    latest[key] = (when, int(a["id"]), value)
    rows = database_rows(
        database_url,
        "SELECT annotation_id, attribute, value, outcome FROM review_annotations WHERE state = 'active'",
    )
    db_answers: dict[int, dict[str, str]] = defaultdict(dict)
    for annotation_id, attribute, value, outcome in rows:
        if attribute in db_answers[int(annotation_id)]:
            problems.append(f"annotation {annotation_id} has two active rows for {attribute}")
        if outcome == "applied":
            db_answers[int(annotation_id)][attribute] = value
        elif outcome == "skipped":
            db_answers[int(annotation_id)]["*"] = "skipped"
    for annotation_id in sorted(set(ls_answers) | set(db_answers)):
        want, got = ls_answers.get(annotation_id), db_answers.get(annotation_id)
        if want != got:
            problems.append(f"annotation {annotation_id}: Label Studio {want}, review_annotations {got}")
    human = {
        (str(p), str(a)): str(v)
        for p, a, v in database_rows(
            database_url, "SELECT product_id, attribute, value FROM product_attributes WHERE source = 'human'"
        )
    }
    for key in sorted(set(human) | set(latest)):
        want_value = latest[key][2] if key in latest else None
        if human.get(key) != want_value:
            problems.append(
                f"{key[0]}/{key[1]}: Label Studio's latest {want_value}, product_attributes {human.get(key)}"
            )
    counts = {
        "label_studio_annotations": annotations,
        "active_annotations": len(db_answers),
        "human_values": len(human),
        "products": len(per_product),
    }
    return problems, counts


def soft_wait(condition: Callable[[], bool], timeout_s: float, what: str, worker: WorkerProcess | None = None) -> bool:
    """Wait for `condition`; on timeout log it, have the worker write its threads' stacks into its log (what was it
    doing?) and go on (the final comparison says what is missing)."""
    try:
        wait_until(condition, timeout_s, what)
        return True
    except AssertionError:
        log.error("timed out after %.0fs waiting for %s", timeout_s, what)
        if worker is not None:
            worker.dump_stacks()
        return False


def wait_until(
    condition: Callable[[], bool], timeout_s: float, what: str, tail: Callable[[], str] = str, *, step_s: float = 0.2
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{tail()}")


def outbox_counts(database_url: str) -> dict[str, int]:
    return {
        str(s): int(n) for s, n in database_rows(database_url, "SELECT status, count(*) FROM review_outbox GROUP BY 1")
    }


def recorded_annotations(database_url: str) -> int:
    return int(database_rows(database_url, "SELECT count(DISTINCT annotation_id) FROM review_annotations")[0][0] or 0)


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
        wait_until(all_sent, 60, "the restarted worker to send the new products", tail)
        counts.resend_after_restart_s.append(round(time.monotonic() - restarted, 2))
        soft_wait(lambda: recorded_annotations(database_url) >= expected, 60, "the catch-up", worker)
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
                wait_until(all_sent, 60, "the restarted worker to send the new products", tail)
                counts.resend_after_restart_s.append(round(time.monotonic() - restarted, 2))
                break
            target = recorded_annotations(database_url) + 1  # the first answer of the catch-up is in: kill it
            try:
                wait_until(
                    lambda t=target: recorded_annotations(database_url) >= t, 60, "the catch-up", tail, step_s=0.02
                )
            except AssertionError:
                log.warning("the catch-up did not reach %d annotations before the kill", target)
            counts.kills_mid_sync += int(recorded_annotations(database_url) < expected)
            worker.kill()
            counts.kills += 1
        soft_wait(lambda: recorded_annotations(database_url) >= expected, 60, "the catch-up after the kills", worker)

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


# --------------------------------------------------------------------------------------------------- reconcile cost


@dataclass
class ReconcileCost:
    tasks: int
    answered: int
    requests: int
    response_bytes: int
    seconds: float
    differing: int

    page_size: int = 1000

    def per_10k(self) -> dict[str, float]:
        """Bytes scale with the tasks; requests with the pages (one per `page_size` tasks) plus the fixed ones."""
        pages = -(-self.tasks // self.page_size)
        fixed = max(self.requests - pages, 0)
        scale = 10_000 / max(self.tasks, 1)
        return {"requests": -(-10_000 // self.page_size) + fixed, "bytes": round(self.response_bytes * scale)}


def measure_reconcile(label_studio: Any, database_url: str, bundle: Path, n: int) -> ReconcileCost:
    """Create `n` tasks (a third answered), record them as the worker would, then count what one full reconcile
    asks of Label Studio when nothing differs (its steady state): requests and response bytes."""
    from connectors.db import ProductStore, ReviewStore
    from connectors.labelstudio import LabelStudioClient
    from daemon.metrics import ReviewMetrics
    from daemon.review.applier import AnnotationApplier
    from daemon.review.project import ReviewProject
    from daemon.review.reconcile import FullReconcile

    taxonomy = taxonomy_of(bundle)
    rng = random.Random(1)
    store = ProductStore(database_url)
    store.migrate()
    reviews = ReviewStore(store)
    traffic = Counter[str]()

    def count(response: httpx.Response) -> None:
        response.read()
        traffic["requests"] += 1
        traffic["bytes"] += len(response.content)

    http = httpx.Client(timeout=60, event_hooks={"response": [count]})
    client = LabelStudioClient(label_studio.url, label_studio.token, timeout_s=60, http_client=http)
    project = ReviewProject(client, taxonomy, f"reconcile-cost-{uuid.uuid4().hex[:6]}", model_version=lambda: None)
    project_id = project.ensure()
    annotators = Annotators(client, taxonomy, project_id, rng)
    for start in range(0, n, 500):
        batch = [
            {"data": {"image": "/x.jpg", "product_id": f"C-{i}", "title": "t"}}
            for i in range(start, min(n, start + 500))
        ]
        client.import_tasks(project_id, batch)
    answered, _ = annotators.answer_tasks(n // 3)
    metrics = ReviewMetrics()
    applier = AnnotationApplier(reviews, client, taxonomy, metrics)
    reconcile = FullReconcile(reviews, project, applier, metrics)
    reconcile.run_once()  # first pass: reads the answered tasks whole once (nothing was recorded yet)
    traffic.clear()
    t0 = time.monotonic()
    report = reconcile.run_once()
    seconds = time.monotonic() - t0
    store.close()
    return ReconcileCost(n, answered, traffic["requests"], traffic["bytes"], round(seconds, 2), report.differing)


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
