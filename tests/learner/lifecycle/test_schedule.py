"""The learner service (learner/lifecycle/schedule.py) as
real processes on a real PostgreSQL: the APScheduler jobs live in
the product database, only the replica holding the scheduler lock runs them, and a standby takes over when the
leader dies. The run command is a stand-in (a small script that records who ran it), so no model is trained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors.db import ProductStore

ROOT = Path(__file__).resolve().parents[3]

FAKE_RUN = """
import json, os, sys
args = sys.argv[1:]
with open(os.environ["RUN_LOG"], "a") as f:
    f.write(os.environ["SERVICE_NAME"] + " " + args[args.index("--reason") + 1] + "\\n")
with open(args[args.index("--outcome-file") + 1], "w") as f:
    json.dump({"status": "skipped", "message": "stand-in run"}, f)
"""

SERVICE = """
import os, signal, sys
from connectors.db import ProductStore
from learner.lifecycle.schedule import LearnerService, ScheduleConfig
store = ProductStore(os.environ["DATABASE_URL"])
config = ScheduleConfig(interval_hours=1 / 3600, check_interval_s=3600, standby_poll_s=0.3, lock_check_s=0.3)
service = LearnerService(store, [sys.executable, os.environ["FAKE_RUN"]], config)
signal.signal(signal.SIGTERM, lambda *_: service.stop())
service.run()
"""


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _runs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


@pytest.mark.postgres
def test_only_the_leader_runs_the_stored_jobs_and_a_standby_takes_over_when_it_dies(
    postgres_url: str, tmp_path: Path
) -> None:
    store = ProductStore(postgres_url)
    store.migrate()
    (tmp_path / "fake_run.py").write_text(FAKE_RUN)
    (tmp_path / "service.py").write_text(SERVICE)
    log = tmp_path / "runs.log"
    base_env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "FAKE_RUN": str(tmp_path / "fake_run.py"),
        "RUN_LOG": str(log),
        "PYTHONPATH": str(ROOT),
    }

    def start(name: str) -> subprocess.Popen[bytes]:
        env = {**base_env, "SERVICE_NAME": name}
        return subprocess.Popen([sys.executable, str(tmp_path / "service.py")], env=env, cwd=ROOT)

    first = start("first")
    second = None
    try:
        assert _wait_for(lambda: "first" in _runs(log), 120), "the first service never ran its job"
        second = start("second")
        time.sleep(4)  # the interval job fires every second: a second scheduler would show up by now
        # ... and a loaded machine may need longer for the three runs checked below: wait for them
        assert _wait_for(lambda: len(_runs(log)[::2]) >= 3, 120), f"fewer than three runs: {_runs(log)}"
        names = _runs(log)[::2]
        assert set(names) == {"first"} and len(names) >= 3
        with store.engine.connect() as conn:
            jobs = dict(conn.execute(sa.text("SELECT id, next_run_time FROM learner_jobs")).all())
        assert set(jobs) == {"retrain-schedule", "retrain-on-corrections"}

        first.kill()  # no goodbye: the server ends its session and with it the advisory lock
        first.wait(30)
        assert _wait_for(lambda: "second" in _runs(log), 120), "the standby never took over"
        assert _runs(log)[-2:] == ["second", "schedule"]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        store.close()
    assert second is not None and second.returncode == 0


SLOW_RUN = """
import json, os, sys, time
with open(os.environ["RUN_LOG"], "a") as f:
    f.write("run\\n")
time.sleep(2.5)
args = sys.argv[1:]
with open(args[args.index("--outcome-file") + 1], "w") as f:
    json.dump({"status": "skipped", "message": "stand-in run"}, f)
"""

QUIET_SERVICE = """
import logging, os, signal, sys
logging.basicConfig(level=logging.WARNING)
from connectors.db import ProductStore
from learner.lifecycle.schedule import LearnerService, ScheduleConfig
store = ProductStore(os.environ["DATABASE_URL"])
store.migrate()
config = ScheduleConfig(interval_hours=1 / 3600, check_interval_s=3600, standby_poll_s=0.3, lock_check_s=0.3)
service = LearnerService(store, [sys.executable, os.environ["SLOW_RUN"]], config)
signal.signal(signal.SIGTERM, lambda *_: service.stop())
service.run()
"""


def test_trigger_checks_skipped_during_a_run_do_not_flood_the_log_with_warnings(
    sqlite_url: str, tmp_path: Path
) -> None:
    (tmp_path / "slow_run.py").write_text(SLOW_RUN)
    (tmp_path / "service.py").write_text(QUIET_SERVICE)
    env = {**os.environ, "DATABASE_URL": sqlite_url, "SLOW_RUN": str(tmp_path / "slow_run.py"), "PYTHONPATH": str(ROOT)}
    env["RUN_LOG"] = str(tmp_path / "runs.log")
    service = subprocess.Popen(
        [sys.executable, str(tmp_path / "service.py")], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    time.sleep(8)  # the 1 s interval job fires about twice during each 2.5 s run
    # a loaded machine starts the service and its runs later: wait for the two runs checked below before stopping
    _wait_for(lambda: len(_runs(tmp_path / "runs.log")) >= 2, 120)
    service.send_signal(signal.SIGTERM)
    _, stderr = service.communicate(timeout=60)
    assert service.returncode == 0, stderr
    assert len(_runs(tmp_path / "runs.log")) >= 2  # so trigger checks did fall during runs
    assert "maximum number of running instances" not in stderr, stderr
