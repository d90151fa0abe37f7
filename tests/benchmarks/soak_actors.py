"""The actors of the review-loop soak (soak_review.py): the review worker as a subprocess configured like an operator
would (`WorkerProcess`, `worker_env`), products routed into the outbox as the enrichment daemon would
(`route_products`), and scripted annotators working the queue through label-studio-sdk (`Annotators`, `Editor`).

What it must not do: check anything (soak_checks.py does), or mock a service.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CC0_DIR = ROOT / "deploy" / "demo" / "clothing-cc0"
SECRET = "soak-webhook-secret"
WORKER_ID = "soak-review-worker"

log = logging.getLogger("soak_review")


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
        return self.proc.wait(timeout=120)  # generous: a graceful stop is slow on a loaded machine

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
