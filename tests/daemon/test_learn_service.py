"""`shelfsight learn` (the service) as a real process on SQLite: it leads the scheduler, stores its jobs in the
product database, serves its metrics and health on the HTTP port, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import sqlalchemy as sa
from devprocess import free_port  # deploy/dev, on sys.path via tests/conftest.py

from connectors.db import ProductStore

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def test_learn_service_leads_serves_metrics_and_stops_on_sigterm(sqlite_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SHELFSIGHT_DATABASE_URL": sqlite_url,
        "SHELFSIGHT_HTTP_PORT": str(port),
        "SHELFSIGHT_LEARNER__REGISTRY_DIR": str(tmp_path / "registry"),
        "SHELFSIGHT_LEARNER__WORK_DIR": str(tmp_path / "work"),
        "SHELFSIGHT_LEARNER__CRON": "0 3 * * *",
    }
    env.pop("SHELFSIGHT_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "learn"], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        metrics = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "shelfsight_learner_scheduler_leader 1.0" not in metrics:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
            _, metrics = _get(f"http://127.0.0.1:{port}/metrics")
        assert "shelfsight_learner_scheduler_leader 1.0" in metrics
        assert 'shelfsight_learner_runs_total{outcome="promoted"} 0.0' in metrics
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200

        store = ProductStore(sqlite_url)
        with store.engine.connect() as conn:
            jobs = {row[0] for row in conn.execute(sa.text("SELECT id FROM learner_jobs"))}
        store.close()
        assert jobs == {"retrain-schedule", "retrain-on-corrections"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0


def test_the_multi_label_positive_weight_cap_reaches_the_retraining_recipe() -> None:
    from daemon.commands_learn import retrain_config
    from daemon.config import LearnerSettings

    assert retrain_config(LearnerSettings(), "cpu").recipe.pos_weight_cap == 0.0
    assert retrain_config(LearnerSettings(pos_weight_cap=8.0), "cpu").recipe.pos_weight_cap == 8.0


def test_learner_settings_reach_the_detector_recipe_and_the_detection_gate() -> None:
    from daemon.commands_learn import retrain_config
    from daemon.config import LearnerSettings

    settings = LearnerSettings(
        detector_epochs=2,
        detector_batch_size=8,
        detector_lr=5e-5,
        detector_trainable_blocks=1,
        gate_detection_margin=0.05,
        threads=1,
    )
    config = retrain_config(settings, "cpu")
    assert (config.detector.epochs, config.detector.batch_size, config.detector.lr) == (2, 8, 5e-5)
    assert config.detector.trainable_blocks == 1 and config.detector.device == "cpu" and config.detector.threads == 1
    assert config.gate.max_detection_regression == 0.05


def test_the_leader_exports_the_registrys_streak_of_vetoed_significant_winners(sqlite_url: str, tmp_path: Path) -> None:
    from learner.lifecycle.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "registry")
    vetoed = {"promote": False, "bootstrap": {"low": 0.017, "high": 0.033}, "regressions": ["kids/top1 -0.05"]}
    for version in ("v1", "v2", "v3"):
        registry.record_decision(version, vetoed)
    port = free_port()
    env = {
        **os.environ,
        "SHELFSIGHT_DATABASE_URL": sqlite_url,
        "SHELFSIGHT_HTTP_PORT": str(port),
        "SHELFSIGHT_LEARNER__REGISTRY_DIR": str(registry.root),
        "SHELFSIGHT_LEARNER__WORK_DIR": str(tmp_path / "work"),
        "SHELFSIGHT_LEARNER__CRON": "0 3 * * *",
    }
    env.pop("SHELFSIGHT_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "learn"], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        metrics = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "shelfsight_learner_scheduler_leader 1.0" not in metrics:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
            _, metrics = _get(f"http://127.0.0.1:{port}/metrics")
        assert "shelfsight_learner_gate_vetoed_wins_consecutive 3.0" in metrics
        assert 'shelfsight_learner_gate_vetoes_total{reason="group_regression"} 0.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_learner_settings_reach_the_gate_margin_and_the_minimum_class_support() -> None:
    from daemon.commands_learn import retrain_config
    from daemon.config import LearnerSettings

    config = retrain_config(LearnerSettings(gate_margin=0.03, gate_min_class_support=8), "cpu")
    assert config.gate.max_group_regression == 0.03 and config.gate.min_class_support == 8
    assert LearnerSettings().gate_min_class_support == 5


def test_learner_settings_reach_the_holdout_floor_and_cap() -> None:
    from daemon.commands_learn import retrain_config
    from daemon.config import LearnerSettings

    config = retrain_config(LearnerSettings(holdout_min_products=50, holdout_max_products=900), "cpu")
    assert (config.holdout.min_products, config.holdout.max_products) == (50, 900)
