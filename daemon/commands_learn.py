"""`shelfsight learn`: the learner service (scheduled retraining, /metrics) and `shelfsight learn --once` (one run).

This file turns `LearnerSettings` into `RetrainConfig` / `ScheduleConfig` (learner.lifecycle) and wires
the database, the image fetcher, metrics and the HTTP endpoint; the rules live in learner/.

- `shelfsight learn --once [--reason manual|schedule|corrections] [--force]`: one retraining run under the
  database run lock. Exit status 0 whatever the gate decided (promoted, rejected), also when there was nothing
  to do (skipped) or another learner was running (locked); 1 when the run failed; 2 on bad configuration.
- `shelfsight learn`: the service. The replica holding the scheduler lock runs the APScheduler jobs; each run
  is a child `shelfsight learn --once` process. Serves /healthz, /readyz and /metrics (`LearnerMetrics`) on
  `http_host:http_port`.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from daemon.cli_support import CONFIG_OPTION, configure_logging, fail, load_settings
from daemon.config import fields_for

if TYPE_CHECKING:
    from daemon.config import LearnerSettings, Settings
    from daemon.metrics import LearnerMetrics
    from learner.lifecycle.retrain import RetrainConfig

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("learn")(learn_command)


def learn_command(
    once: bool = typer.Option(False, "--once", help="Run one retraining now and exit (no scheduler)."),
    reason: str = typer.Option("manual", help="Why this run: manual, schedule or corrections (with --once)."),
    force: bool = typer.Option(False, help="Retrain even without new corrections (with --once)."),
    outcome_file: Path | None = typer.Option(None, help="Also write the run's outcome as JSON here (with --once)."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Retrain on human corrections: as a scheduled service, or one run with --once."""
    settings = load_settings(config)
    configure_logging(settings.log_level)
    if reason not in ("manual", "schedule", "corrections"):
        raise fail(f"--reason must be manual, schedule or corrections, not {reason!r}", 2)
    if once:
        raise typer.Exit(run_once(settings, reason, force, outcome_file))
    raise typer.Exit(serve(settings))


def retrain_config(learner: LearnerSettings, device: str) -> RetrainConfig:
    """`LearnerSettings` -> `learner.lifecycle.retrain.RetrainConfig`: each setting reaches the field of its name
    (`LearnerSettings.as_fields`); the recipes' other fields keep TrainConfig's and DetectorRecipe's defaults."""
    import dataclasses

    from learner.evaluation.gate import GateConfig
    from learner.lifecycle.holdout import HoldoutRule
    from learner.lifecycle.retrain import RetrainConfig
    from learner.training.detector import DetectorRecipe
    from learner.training.finetune import default_recipe
    from learner.training.recipe import TrainConfig

    values = learner.as_fields()
    runtime = {"amp": learner.amp, "threads": learner.threads, "device": device}
    detector = {**learner.as_fields("detector_"), **runtime}
    return RetrainConfig(
        **fields_for(RetrainConfig, values),
        holdout=HoldoutRule(**fields_for(HoldoutRule, learner.as_fields("holdout_"))),
        recipe=dataclasses.replace(default_recipe(), **fields_for(TrainConfig, {**values, **runtime})),
        detector=DetectorRecipe(**fields_for(DetectorRecipe, detector), progress=False),
        gate=GateConfig(**fields_for(GateConfig, values)),
    )


def run_once(settings: Settings, reason: str, force: bool, outcome_file: Path | None) -> int:
    from connectors.db import ProductStore, RetrainingStore
    from daemon.service import build_fetcher
    from learner.lifecycle.retrain import run_retraining
    from learner.training.runtime import retain_freed_memory

    # this process retrains and ends (the service runs it as a child): freed memory is kept for the next training
    # step instead of faulted in again, as in `shelfsight train` (tests/benchmarks/bench_train_step.py)
    retain_freed_memory()
    store = ProductStore(settings.database_url)
    fetcher = build_fetcher(settings.fetch)
    try:
        store.migrate()
        outcome = run_retraining(
            retrain_config(settings.learner, settings.device), RetrainingStore(store), fetcher, reason, force
        )
    finally:
        fetcher.close()
        store.close()
    result = outcome.to_dict()
    if outcome_file is not None:
        tmp = outcome_file.with_name(outcome_file.name + ".tmp")
        tmp.write_text(json.dumps(result, default=str), encoding="utf-8")
        tmp.replace(outcome_file)
    line = f"{outcome.status}: {outcome.message}".rstrip(": ")
    if outcome.challenger:
        line += f" (challenger {outcome.challenger})"
    typer.echo(line)
    return 1 if outcome.status == "failed" else 0


def serve(settings: Settings) -> int:
    from connectors.db import ProductStore, RetrainingStore
    from daemon.http import HealthServer
    from daemon.metrics import LearnerMetrics
    from learner.lifecycle.schedule import LearnerService, ScheduleConfig

    learner = settings.learner
    metrics = LearnerMetrics()
    store = ProductStore(settings.database_url)
    store.migrate()
    metrics.track_new_corrections(RetrainingStore(store).new_corrections_since_last_run, learner.min_corrected_products)

    def on_outcome(outcome: dict[str, Any]) -> None:
        metrics.observe_outcome(outcome)
        _publish_champion(metrics, learner.registry_dir)

    command = [sys.executable, "-m", "daemon.cli", "learn", "--once"]
    service = LearnerService(
        store,
        command,
        ScheduleConfig(**fields_for(ScheduleConfig, learner.as_fields())),
        on_outcome=on_outcome,
        on_leader=lambda leader: _on_leader(metrics, learner.registry_dir, leader),
    )
    _publish_champion(metrics, learner.registry_dir)
    http = None
    if settings.http_port:
        http = HealthServer(settings.http_host, settings.http_port, metrics.registry, ready=store.ping).start()
        log.info("learner metrics on http://%s:%d/metrics", settings.http_host, http.port)

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping the learner", signum)
        service.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        service.run()
    finally:
        if http is not None:
            http.stop()
        store.close()
    return 0


def _on_leader(metrics: LearnerMetrics, registry_dir: Path, leader: bool) -> None:
    """The leader exports the registry's streak of vetoed significant winners (it survives restarts and leader
    changes); a standby replica exports 0 so that the alert sees one figure."""
    from learner.lifecycle.registry import ModelRegistry

    if leader:
        try:
            metrics.seed_gate_streak(ModelRegistry(registry_dir).decisions())
        except Exception as exc:  # metrics must never stop the service
            log.warning("gate decisions in %s unreadable: %s", registry_dir, exc)
    else:
        metrics.reset_gate_streak()
    metrics.leader.set(1 if leader else 0)


def _publish_champion(metrics: LearnerMetrics, registry_dir: Path) -> None:
    from learner.lifecycle.registry import read_alias_state

    try:
        state = read_alias_state(registry_dir)
    except Exception as exc:  # metrics must never stop the service
        log.warning("registry %s unreadable: %s", registry_dir, exc)
        return
    metrics.champion.info({"version": state.version("champion") or "", "generation": str(state.generation)})
