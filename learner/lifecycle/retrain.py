"""One retraining run (`run_retraining`): under the database run lock, assemble the data, fine-tune the champion,
evaluate both on the holdout, apply the gate, register the challenger and promote it only when it won.

The steps live where they belong; this module wires them and records the outcome:
- data: learner/lifecycle/corrections.py (original labelled set + human corrections, replay, train/val split, boxes);
- holdout: learner/lifecycle/holdout.py (the pinned rule; the run's threshold, recorded in the registry before
  anything is trained so that no later holdout can take in what this run trained on; scoring a bundle on it);
- classifier: learner/training/finetune.py (`fine_tune`), in this process, or with `nproc_per_node` > 1 data-parallel
  under torchrun (learner/training/launch.py writes nothing but the challenger and a failure reason);
- detector (`fine_tune_detector` in learner/training/detector.py, its recipe `RetrainConfig.detector`): when the
  champion has one and annotators boxed objects on products outside the holdout, the challenger gets a copy
  fine-tuned on those boxes; otherwise the champion's detector goes on unchanged. The figures (images, objects,
  skipped boxes, loss per epoch) are recorded in the challenger's lineage and with the decision
  (`detector_training`);
- gate: learner/evaluation/gate.py (`decide`); registry and aliases: learner/lifecycle/registry.py.

The champion only ever changes in the last step (an atomic alias update), so a crash anywhere leaves it as it was.
A failed run is recorded as failed; a training failure (non-finite loss or weights) is a rejection with its reason.

What it must not do: read configuration (daemon/ passes a `RetrainConfig`), or promote without the gate.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from connectors.db import DatabaseLock, RetrainingStore
from connectors.images import ImageFetcher
from learner.datasets.labelled import DataError
from learner.evaluation.gate import GateConfig, GateDecision, decide
from learner.lifecycle.corrections import TrainingData, assemble_training_data
from learner.lifecycle.errors import RetrainError
from learner.lifecycle.holdout import (
    HoldoutEvaluation,
    HoldoutRule,
    evaluate_on_holdout,
    holdout_ceiling,
    pin_holdout_rule,
    record_holdout_threshold,
)
from learner.lifecycle.registry import CHAMPION, ModelRegistry, RegistryError, read_alias_state
from learner.model.bundle import BundleError, ModelBundle, load_bundle
from learner.training import launch
from learner.training.detector import DetectorRecipe, DetectorTrainingError, fine_tune_detector
from learner.training.errors import TrainingError
from learner.training.finetune import default_recipe, fine_tune
from learner.training.recipe import TrainConfig

log = logging.getLogger(__name__)

RUN_LOCK = "learner-retrain"


# --- configuration and results ------------------------------------------------------------------------


@dataclass
class RetrainConfig:
    """Everything one run needs besides the database and the image fetcher (daemon/commands_learn.py builds it
    from `LearnerSettings`)."""

    registry: Path
    work_dir: Path
    base_data: Path | None = None  # the original labelled set (labels.csv + images/); None: corrections only
    base_group_column: str | None = None  # column of labels.csv holding the product id (default: image name)
    holdout: HoldoutRule = field(default_factory=HoldoutRule)
    val_fraction: float = 0.15
    min_corrections: int = 50  # products with new corrections needed for a run triggered by corrections
    replay_ratio: float = 4.0
    replay_min_samples: int = 1000
    recipe: TrainConfig = field(default_factory=default_recipe)
    detector: DetectorRecipe = field(default_factory=lambda: DetectorRecipe(progress=False))
    gate: GateConfig = field(default_factory=GateConfig)
    nproc_per_node: int = 1  # >1: torchrun with that many processes (one per GPU)
    eval_batch_size: int = 64


@dataclass
class RunOutcome:
    """What one call of `run_retraining` did. `status`: promoted, rejected, failed, skipped, or locked (another
    learner holds the run lock; nothing was recorded)."""

    status: str
    run_id: int | None = None
    champion: str | None = None
    challenger: str | None = None
    decision: dict[str, Any] | None = None
    champion_holdout: dict[str, Any] | None = None
    challenger_holdout: dict[str, Any] | None = None
    message: str = ""
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- one run ------------------------------------------------------------------------------------------


def run_retraining(
    config: RetrainConfig,
    learner_store: RetrainingStore,
    fetcher: ImageFetcher,
    reason: str = "manual",
    force: bool = False,
    on_phase: Callable[[str], None] | None = None,
) -> RunOutcome:
    """One retraining run under the database run lock (see the module docstring). Without `force`, a run with
    no correction newer than the last completed (promoted or rejected) run's, or for `reason` 'corrections' fewer
    than `min_corrections` of them, is recorded as skipped. Exceptions after the run is recorded become a 'failed'
    run; the champion only ever changes in the last step (an atomic alias update), so a crash anywhere leaves it
    as it was."""
    started = time.time()
    lock = DatabaseLock(learner_store.store, RUN_LOCK)
    if not lock.try_acquire():
        return RunOutcome("locked", message="another learner process is retraining; nothing to do")
    registry = ModelRegistry(config.registry)
    run_id: int | None = None
    try:
        removed = registry.remove_orphans()
        if removed:
            log.warning("removed %d files left by an interrupted run: %s", len(removed), [p.name for p in removed])
        _clean_work_dir(config.work_dir)
        champion_version = read_alias_state(config.registry).version(CHAMPION)
        run_id, abandoned = learner_store.start_run(reason, champion_version)
        if abandoned:
            log.warning("%d earlier run(s) were still marked running: recorded as abandoned", abandoned)
        outcome = _run(
            config, learner_store, fetcher, registry, lock, run_id, champion_version, reason, force, on_phase
        )
    except Exception as exc:
        expected = RegistryError | RetrainError | DataError | BundleError | TrainingError | DetectorTrainingError
        if isinstance(exc, expected):  # expected: the message says it
            log.error("retraining run %s failed: %s", run_id, exc)
        else:
            log.exception("retraining run %s failed", run_id)
        outcome = RunOutcome("failed", run_id=run_id, message=f"{type(exc).__name__}: {exc}")
        if run_id is not None:
            learner_store.finish_run(run_id, "failed", detail={"error": outcome.message})
    finally:
        lock.release()
    outcome.duration_s = round(time.time() - started, 2)
    return outcome


def _run(
    config: RetrainConfig,
    learner_store: RetrainingStore,
    fetcher: ImageFetcher,
    registry: ModelRegistry,
    lock: DatabaseLock,
    run_id: int,
    champion_version: str | None,
    reason: str,
    force: bool,
    on_phase: Callable[[str], None] | None,
) -> RunOutcome:
    phase = on_phase or (lambda _name: None)
    if champion_version is None:
        raise RegistryError(
            f"the registry {config.registry} has no champion to fine-tune; register one first: "
            "`shelfsight models register BUNDLE --promote`"
        )
    pin_holdout_rule(config.registry, config.holdout)
    champion = load_bundle(registry.resolve(CHAMPION))
    last = learner_store.last_completed_run()
    since = last.corrections_until if last is not None else None
    corrections = learner_store.human_corrections()
    new_rows = len({c.product_id for c in corrections if since is None or c.updated_at > since})
    needed = 1 if reason != "corrections" else config.min_corrections
    if not force and new_rows < needed:
        message = f"{new_rows} new correction(s) since the last run (counted by product), {needed} needed"
        learner_store.finish_run(run_id, "skipped", detail={"message": message})
        return RunOutcome("skipped", run_id=run_id, champion=champion_version, message=message)

    phase("data")
    # "new" for the replay rule: corrections the champion has not learned from (a rejected run's are still new)
    data = assemble_training_data(
        config, champion.taxonomy, corrections, champion_data_until(champion), fetcher, holdout_ceiling(config.registry)
    )
    record_holdout_threshold(config.registry, data.effective_holdout, run_id)  # before anything is trained
    run_dir = config.work_dir / "runs" / str(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    lineage = {"data": data.snapshot, "split": data.snapshot["val_split"], "holdout": data.effective_holdout.to_dict()}
    lineage["run_id"] = run_id

    phase("train")
    challenger, failure = _train(config, champion, data, run_dir, lineage)
    detector_training = None
    if challenger is not None:
        detector_training, detector_failure = _train_detector(config, champion, challenger, data)
        failure = failure or detector_failure

    phase("evaluate")
    champion_eval = challenger_eval = None
    try:
        device, batch = config.recipe.device, config.eval_batch_size
        champion_eval = evaluate_on_holdout(champion, data.holdout, device, batch, data.holdout_boxes)
        if challenger is not None:
            challenger_eval = evaluate_on_holdout(challenger, data.holdout, device, batch, data.holdout_boxes)
    except Exception as exc:  # a failed evaluation means rejection, with the reason recorded
        log.exception("holdout evaluation failed")
        failure = failure or f"evaluation failed: {type(exc).__name__}: {exc}"
    decision = decide(
        champion_eval.metrics if champion_eval else None,
        challenger_eval.metrics if challenger_eval else None,
        champion_eval.scores if champion_eval else None,
        challenger_eval.scores if challenger_eval else None,
        config.gate,
        failure=failure,
        champion_detection=champion_eval.detection if champion_eval else None,
        challenger_detection=challenger_eval.detection if challenger_eval else None,
    )
    record = _decision_record(
        decision, champion_version, champion_eval, challenger_eval, data, run_id, detector_training
    )

    phase("register")
    if not lock.held():
        raise RetrainError(
            "the run lock was lost during the run (database connection or lease gone), so another learner may be "
            "running: nothing registered or promoted; the next run starts over"
        )
    current = read_alias_state(config.registry).version(CHAMPION)
    if decision.promote and current != champion_version:
        decision.promote = False
        decision.reasons.append(f"the champion changed during the run ({champion_version} -> {current}): not promoted")
        record = _decision_record(
            decision, champion_version, champion_eval, challenger_eval, data, run_id, detector_training
        )
    challenger_version = None
    if challenger is not None:
        challenger.metrics["holdout"] = challenger_eval.summary() if challenger_eval else None
        challenger.lineage["gate"] = decision.to_dict()
        path = challenger.save(run_dir / "challenger.safetensors")
        registry.register(path, run_id=run_id, status=decision.outcome, holdout=challenger.metrics["holdout"])
        challenger_version = challenger.model_version
        registry.record_decision(challenger_version, record)
        if decision.promote:
            registry.promote(challenger_version, reason=decision.summary(), actor=f"learner run {run_id}")
    else:
        registry.record_decision(f"run-{run_id}-no-challenger", record)
    learner_store.finish_run(
        run_id,
        decision.outcome,
        challenger_version=challenger_version,
        corrections_used=len(corrections),
        corrections_until=data.corrections_until,
        detail=record,
    )
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("run %d: %s", run_id, decision.summary())
    return RunOutcome(
        decision.outcome,
        run_id=run_id,
        champion=champion_version,
        challenger=challenger_version,
        decision=record,
        champion_holdout=record.get("champion_holdout"),
        challenger_holdout=record.get("challenger_holdout"),
        message=decision.summary(),
    )


def champion_data_until(bundle: ModelBundle) -> datetime | None:
    """The newest human correction the bundle was trained on (None: none, e.g. the first champion)."""
    until = ((bundle.lineage.get("data") or {}).get("corrections") or {}).get("until")
    return datetime.fromisoformat(until) if until else None


def _train(
    config: RetrainConfig, champion: ModelBundle, data: TrainingData, run_dir: Path, lineage: dict[str, Any]
) -> tuple[ModelBundle | None, str | None]:
    """Fine-tune in this process, or with torchrun when `nproc_per_node` > 1. (challenger, failure)."""
    if config.nproc_per_node <= 1:
        result = fine_tune(champion, data.train, data.val, config.recipe, lineage=lineage)
        return result.bundle, result.failure
    plan = launch.TrainingPlan(
        champion=str(run_dir / "champion.safetensors"),
        out=str(run_dir / "challenger.safetensors"),
        failure_file=str(run_dir / "failure.txt"),
        train=[launch.sample_to_dict(s) for s in data.train],
        val=[launch.sample_to_dict(s) for s in data.val],
        recipe=config.recipe.to_dict(),
        lineage=lineage,
    )
    champion.save(plan.champion)
    plan_path = plan.write(run_dir / "plan.json")
    command = launch.torchrun_command(plan_path, config.nproc_per_node)
    log.info("training with %d processes: %s", config.nproc_per_node, " ".join(command))
    done = subprocess.run(command, check=False)
    failure_file = Path(plan.failure_file)
    if failure_file.exists():
        return None, failure_file.read_text(encoding="utf-8").strip()
    if done.returncode != 0 or not Path(plan.out).exists():
        return None, f"distributed training exited with status {done.returncode}"
    return load_bundle(plan.out), None


def _train_detector(
    config: RetrainConfig, champion: ModelBundle, challenger: ModelBundle, data: TrainingData
) -> tuple[dict[str, Any], str | None]:
    """Give the challenger a detector fine-tuned on the boxes of training products when the champion has a detector
    and annotators boxed objects the detector knows; otherwise it keeps the champion's (as `fine_tune` left it).
    Returns the figures to record (in the challenger's lineage too) and a failure that rejects the challenger."""
    if champion.detector is None or champion.detector_spec is None:
        figures: dict[str, Any] = {"fine_tuned": False, "reason": "the champion has no detector"}
    elif not data.train_boxes:
        figures = {"fine_tuned": False, "reason": "no boxed objects on products outside the holdout"}
    else:
        result = fine_tune_detector(champion.detector, champion.detector_spec, data.train_boxes, config.detector)
        figures = {"fine_tuned": result.detector is not None, **result.figures}
        if result.detector is not None:
            challenger.detector, challenger.detector_spec = result.detector, result.spec
        else:
            figures["reason"] = result.failure
            if result.figures["images"] > 0:  # it trained and failed (a non-finite loss): the challenger is rejected
                challenger.lineage["detector"] = figures
                return figures, f"detector fine-tuning failed: {result.failure}"
            # boxes, but none of a class the detector knows: as without boxes
    challenger.lineage["detector"] = figures
    if figures["fine_tuned"]:
        log.info("detector fine-tuned on %d boxed objects in %d images", figures["objects"], figures["images"])
    return figures, None


def _decision_record(
    decision: GateDecision,
    champion_version: str,
    champion_eval: HoldoutEvaluation | None,
    challenger_eval: HoldoutEvaluation | None,
    data: TrainingData,
    run_id: int,
    detector_training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "champion": champion_version,
        **decision.to_dict(),
        "champion_holdout": champion_eval.summary() if champion_eval else None,
        "challenger_holdout": challenger_eval.summary() if challenger_eval else None,
        "holdout_images": champion_eval.images if champion_eval else len(data.holdout),
        "holdout": {**data.effective_holdout.to_dict(), "images": len(data.holdout)},  # both models scored on it
        "detector_training": detector_training,
        "data": data.snapshot,
    }


def _clean_work_dir(work_dir: Path) -> None:
    """Per-run directories of earlier runs (a crash leaves them): no run is active while we hold the lock."""
    runs = work_dir / "runs"
    if runs.is_dir():
        for child in runs.iterdir():
            shutil.rmtree(child, ignore_errors=True)


__all__ = [
    "RUN_LOCK",
    "RetrainConfig",
    "RetrainError",
    "RunOutcome",
    "champion_data_until",
    "run_retraining",
]
