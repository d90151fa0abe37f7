"""The review worker's measurement of the audited precision (daemon/review/audit.py) on a real SQLite database: it
exports every group of the champion before the first answer, suspends only when told it may, and a new champion ends
the earlier champion's suspensions (once, even across restarts of the worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.db import AuditStore, ProductStore, ReviewStore
from daemon.metrics import ReviewMetrics
from daemon.review.audit import AutofillAudit, Champion
from tests.daemon.test_autofill_suspension import VERSION, wrong_answers  # answers as the worker records them


@pytest.fixture
def store(sqlite_url: str) -> Iterator[ProductStore]:
    s = ProductStore(sqlite_url)
    s.migrate()
    yield s
    s.close()


def audit(store: ProductStore, champion: dict[str, Champion], **options: object) -> tuple[AutofillAudit, ReviewMetrics]:
    metrics = ReviewMetrics()
    watch = AutofillAudit(
        AuditStore(store),
        ReviewStore(store),
        metrics,
        lambda: champion["now"],
        worker_id="w1",
        **options,  # type: ignore[arg-type]
    )
    return watch, metrics


def test_every_group_of_the_champion_is_exported_before_its_first_answer(store: ProductStore) -> None:
    champion = {"now": Champion("v1", {"garment": 0.95, "kids": 0.97})}
    watch, metrics = audit(store, champion)
    assert [(a.group, a.model_version, a.state) for a in watch.maybe_run() or []] == [
        ("garment", "v1", "too_few"),
        ("kids", "v1", "too_few"),
    ]
    labels = {"group": "garment", "model_version": "v1"}
    r = metrics.registry
    assert r.get_sample_value("shelfsight_autofill_target_precision", labels) == 0.95
    assert r.get_sample_value("shelfsight_autofill_audited_precision_upper", labels) == 1.0
    assert r.get_sample_value("shelfsight_autofill_audited_values", labels) == 0
    assert r.get_sample_value("shelfsight_autofill_audited_precision", labels) is None  # no answer, no point estimate
    assert watch.maybe_run() is None  # not due again before review.audit_interval_s
    assert r.get_sample_value("shelfsight_autofill_audits_total", {"outcome": "ok"}) == 1


def test_a_new_champion_ends_the_earlier_champions_suspensions_once(store: ProductStore) -> None:
    suspensions = AuditStore(store)
    champion = {"now": Champion("v1", {"kids": 0.97})}
    watch, _ = audit(store, champion)
    watch.run_once()  # the worker has seen v1 as champion
    suspensions.suspend("kids", "v1", reason="below target", figures={}, by="review-worker:w1")
    watch.run_once()
    assert suspensions.suspended_groups() == {("kids", "v1")}  # same champion: stays

    champion["now"] = Champion("v2", {"kids": 0.97})
    restarted, _ = audit(store, champion)  # a worker started after the promotion still notices it
    restarted.run_once()
    (ended,) = suspensions.suspensions()
    assert (ended.open, ended.resumed_by) == (False, "promotion of v2")
    suspensions.suspend("kids", "v1", reason="an operator's test", figures={}, by="operator")
    restarted.run_once()
    assert suspensions.suspended_groups() == {("kids", "v1")}  # only a change of champion ends suspensions


def test_with_suspending_off_the_worker_measures_but_never_suspends(store: ProductStore) -> None:
    # 25 wrong answers would suspend; without review.suspend_autofill they only show as below target
    wrong_answers(store, 25)
    champion = {"now": Champion(VERSION, {"kids": 0.97})}
    watch, metrics = audit(store, champion, suspend=False)
    states = {a.group: a.state for a in watch.run_once()}
    assert states["kids"] == "below_target" and AuditStore(store).suspended_groups() == frozenset()
    assert metrics.registry.get_sample_value("shelfsight_autofill_suspensions_total", {"group": "kids"}) is None
