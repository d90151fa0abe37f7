"""The learner service: APScheduler jobs, stored in the product database, that start retraining runs.

- Jobs (APScheduler 3, `SQLAlchemyJobStore` on the product database, table `learner_jobs`):
  `retrain-schedule` (an interval, or a crontab expression) and `retrain-on-corrections` (every
  `check_interval_s`: starts a run once `min_corrections` PRODUCTS got human values since the last completed
  run; values per product do not matter). Both with `coalesce=True` (runs missed while the service was down
  collapse into one),
  `max_instances=1`, a `misfire_grace_time`, and one executor thread, so this process never runs two at once.
- Replicas: APScheduler 3 must not share a job store between schedulers, so only the replica holding the
  database lock `learner-scheduler` runs the scheduler; the others wait as standbys and take over when the
  leader's lock goes (its process died: PostgreSQL releases advisory locks with the session, SQLite leases
  expire). A run itself takes the separate lock `learner-retrain` (learner/lifecycle/retrain.py), which also keeps a
  manual `shelfsight learn --once` from overlapping a scheduled run.
- Each run is a child process (`command`, normally `shelfsight learn --once`), so training never shares memory,
  threads or a CUDA context with the service, and a crash in training cannot take the service down. The child
  writes its outcome as JSON; the service passes it to `on_outcome` (metrics).

The one process-wide variable is `_SERVICE`: APScheduler stores jobs by the import path of a function
(`learner.lifecycle.schedule:run_job`), which finds the service this process runs through it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from connectors.db import DatabaseLock, DatabaseUnavailable, ProductStore, RetrainingStore

log = logging.getLogger(__name__)

SCHEDULER_LOCK = "learner-scheduler"
JOB_TABLE = "learner_jobs"
SCHEDULE_JOB = "retrain-schedule"
CORRECTIONS_JOB = "retrain-on-corrections"
JOB_FUNCTION = "learner.lifecycle.schedule:run_job"

_SERVICE: LearnerService | None = None


class _SkipsWhileRunning(logging.Filter):
    """Drops APScheduler's "skipped: maximum number of running instances reached" warning: with one executor
    thread and `max_instances=1`, every trigger check that falls during a run is skipped on purpose (the first
    check after the run counts the corrections that arrived meanwhile), and a warning every `check_interval_s`
    would bury the run's own log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def run_job(reason: str) -> None:
    """What the stored jobs call (by this import path): one run of the service this process runs."""
    service = _SERVICE
    if service is None:
        log.warning("job %r fired but no learner service runs in this process", reason)
        return
    service.run_job(reason)


@dataclass(frozen=True)
class ScheduleConfig:
    """When to retrain (see `daemon.config.LearnerSettings` for the meaning of each field)."""

    interval_hours: float | None = 24.0
    cron: str | None = None
    check_interval_s: float = 300.0
    min_corrections: int = 50  # products with new human values (daemon.config: learner.min_corrected_products)
    misfire_grace_s: int = 3600
    standby_poll_s: float = 15.0
    lock_check_s: float = 5.0


class LearnerService:
    """Leader election, the scheduler, and child-process runs (see the module docstring)."""

    def __init__(
        self,
        store: ProductStore,
        command: Sequence[str],
        config: ScheduleConfig,
        on_outcome: Callable[[dict[str, Any]], None] | None = None,
        on_leader: Callable[[bool], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.learner_store = RetrainingStore(store)
        self.command = list(command)
        self.config = config
        self.on_outcome = on_outcome or (lambda _outcome: None)
        self.on_leader = on_leader or (lambda _leader: None)
        self.env = env
        self.stop_event = threading.Event()
        self.is_leader = False
        self._child: subprocess.Popen[bytes] | None = None
        self._child_lock = threading.Lock()

    # -- the service loop --------------------------------------------------------------------------
    def run(self) -> None:
        """Until `stop()`: lead when the scheduler lock is free, else stand by."""
        global _SERVICE
        _SERVICE = self
        try:
            while not self.stop_event.is_set():
                lock = DatabaseLock(self.store, SCHEDULER_LOCK, lease_s=max(30.0, 6 * self.config.lock_check_s))
                try:
                    acquired = lock.try_acquire()
                except DatabaseUnavailable as exc:
                    log.warning("database unavailable while electing the scheduler (%s)", exc)
                    acquired = False
                if not acquired:
                    self._set_leader(False)
                    self.stop_event.wait(self.config.standby_poll_s)
                    continue
                try:
                    self._lead(lock)
                finally:
                    lock.release()
                    self._set_leader(False)
        finally:
            _SERVICE = None

    def stop(self) -> None:
        """Stop leading or waiting; a run in progress is ended (SIGTERM to its process: the champion is only
        ever changed atomically, and the next run records this one as abandoned)."""
        self.stop_event.set()
        with self._child_lock:
            if self._child is not None and self._child.poll() is None:
                self._child.send_signal(signal.SIGTERM)

    def _lead(self, lock: DatabaseLock) -> None:
        log.info("this learner leads: running the retraining scheduler")
        self._set_leader(True)
        scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.store.engine, tablename=JOB_TABLE)},
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": self.config.misfire_grace_s},
            timezone=dt.UTC,
        )
        skips = _SkipsWhileRunning()
        logging.getLogger("apscheduler.scheduler").addFilter(skips)
        scheduler.start()
        try:
            self._install_jobs(scheduler)
            while not self.stop_event.wait(self.config.lock_check_s):
                if not lock.held():
                    log.error("lost the scheduler lock (database connection or lease gone): standing by")
                    break
        finally:
            with self._child_lock:
                if self._child is not None and self._child.poll() is None:
                    self._child.send_signal(signal.SIGTERM)
            scheduler.shutdown(wait=True)
            logging.getLogger("apscheduler.scheduler").removeFilter(skips)

    def _install_jobs(self, scheduler: BackgroundScheduler) -> None:
        c = self.config
        schedule_trigger: CronTrigger | IntervalTrigger | None = None
        if c.cron:
            schedule_trigger = CronTrigger.from_crontab(c.cron, timezone=dt.UTC)
        elif c.interval_hours:
            schedule_trigger = IntervalTrigger(seconds=c.interval_hours * 3600, timezone=dt.UTC)
        jobs: dict[str, Any] = {
            SCHEDULE_JOB: (schedule_trigger, "schedule"),
            CORRECTIONS_JOB: (IntervalTrigger(seconds=c.check_interval_s, timezone=dt.UTC), "corrections"),
        }
        for job_id, (trigger, reason) in jobs.items():
            if trigger is None:
                if scheduler.get_job(job_id) is not None:
                    scheduler.remove_job(job_id)
                continue
            existing = scheduler.get_job(job_id)
            if existing is not None and str(existing.trigger) == str(trigger):
                continue  # keep its next run time across restarts (a missed run still happens, once)
            scheduler.add_job(JOB_FUNCTION, trigger, args=[reason], id=job_id, name=job_id, replace_existing=True)
        for job in scheduler.get_jobs():
            log.info("job %s: %s, next run %s", job.id, job.trigger, job.next_run_time)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            self.on_leader(leader)

    # -- one job -----------------------------------------------------------------------------------
    def run_job(self, reason: str) -> dict[str, Any] | None:
        """Start one run in a child process when there is reason to; returns its outcome (None: not started)."""
        if self.stop_event.is_set():
            return None
        if reason == "corrections":
            last = self.learner_store.last_completed_run()
            pending = self.learner_store.count_corrected_products(last.corrections_until if last else None)
            if pending < self.config.min_corrections:
                log.debug("%d newly corrected products, %d needed: no run", pending, self.config.min_corrections)
                return None
        with tempfile.TemporaryDirectory(prefix="shelfsight-learn-") as tmp:
            outcome_file = Path(tmp) / "outcome.json"
            command = [*self.command, "--reason", reason, "--outcome-file", str(outcome_file)]
            log.info("starting a %s run: %s", reason, " ".join(command))
            with self._child_lock:
                if self.stop_event.is_set():
                    return None
                self._child = subprocess.Popen(command, env=self.env or dict(os.environ))
            code = self._child.wait()
            with self._child_lock:
                self._child = None
            try:
                outcome: dict[str, Any] = json.loads(outcome_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                outcome = {"status": "failed", "message": f"the run's process exited with status {code}"}
        log.info("%s run: %s %s", reason, outcome.get("status"), outcome.get("message", ""))
        self.on_outcome(outcome)
        return outcome
