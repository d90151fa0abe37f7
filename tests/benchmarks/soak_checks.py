"""What the review-loop soak (soak_review.py) checks and waits on: Label Studio's latest answers against
`review_annotations` and the human values in `product_attributes` (`compare`), the outbox and annotation counts, and
waiting for a condition with the worker's stacks dumped on a timeout.

Reads only: it never writes to the database or to Label Studio.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, text

from tests.benchmarks.soak_actors import WorkerProcess

log = logging.getLogger("soak_review")

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
