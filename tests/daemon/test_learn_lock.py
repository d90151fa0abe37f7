"""`shelfsight learn --once` as real processes against a real PostgreSQL: two learners started together run one
retraining, not two; and `shelfsight models` shows, promotes and rolls back what the learner registered.

Small on purpose: 60 CC0 photos at 64 px, EfficientNet-Lite0 with every backbone stage frozen, 2 epochs, one
thread per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors.db import ProductStore, RetrainingStore
from daemon.cli import app
from learner.lifecycle.registry import ModelRegistry, read_alias_state
from tests.daemon.harness import prepare_learner_world

ROOT = Path(__file__).resolve().parents[2]
TAXONOMY = ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml"


def _prepare(tmp: Path, database_url: str, cc0_dir: Path) -> dict[str, str]:
    """A champion in a registry, a labelled base set, and a product database with processed products and a few
    human corrections; returns the environment a learner process needs."""
    registry_root = prepare_learner_world(tmp, database_url, cc0_dir, "lock-test-champion")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "SHELFSIGHT_DATABASE_URL": database_url,
        "SHELFSIGHT_DEVICE": "cpu",
        "SHELFSIGHT_LOG_LEVEL": "WARNING",
        "SHELFSIGHT_FETCH__FILE_ROOT": str(cc0_dir / "images"),
        "SHELFSIGHT_LEARNER__REGISTRY_DIR": str(registry_root),
        "SHELFSIGHT_LEARNER__WORK_DIR": str(tmp / "work"),
        "SHELFSIGHT_LEARNER__BASE_DATA": str(tmp / "base"),
        "SHELFSIGHT_LEARNER__HOLDOUT_FRACTION": "0.3",
        "SHELFSIGHT_LEARNER__EPOCHS": "2",
        "SHELFSIGHT_LEARNER__BATCH_SIZE": "16",
        "SHELFSIGHT_LEARNER__LR": "0.003",
        "SHELFSIGHT_LEARNER__FREEZE_STAGES": "9",
        "SHELFSIGHT_LEARNER__THREADS": "1",
        "SHELFSIGHT_LEARNER__BOOTSTRAP_SAMPLES": "500",
    }
    env.pop("SHELFSIGHT_CONFIG", None)
    return env


@pytest.mark.postgres
def test_two_learners_started_together_run_one_retraining(postgres_url: str, cc0_dir: Path, tmp_path: Path) -> None:
    env = _prepare(tmp_path, postgres_url, cc0_dir)
    command = [sys.executable, "-m", "daemon.cli", "learn", "--once"]
    procs = [
        subprocess.Popen(
            [*command, "--outcome-file", str(tmp_path / f"outcome{i}.json")],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]  # generous: two trainings share a loaded machine
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"{out}\n{err[-3000:]}"
    statuses = sorted(json.loads((tmp_path / f"outcome{i}.json").read_text())["status"] for i in range(2))
    trained = [s for s in statuses if s in ("promoted", "rejected")]
    assert len(trained) == 1, statuses
    assert statuses[1 - statuses.index(trained[0])] in ("locked", "skipped")

    store = ProductStore(postgres_url)
    runs = RetrainingStore(store).runs()
    store.close()
    assert [r.status for r in runs if r.status in ("promoted", "rejected")] == trained
    registry = ModelRegistry(env["SHELFSIGHT_LEARNER__REGISTRY_DIR"])
    assert len(registry.versions()) == 2  # the champion and exactly one challenger

    # the registry from the command line: list, show, and (when the challenger won) rollback
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list", "--json", "--registry", str(registry.root)])
    assert listed.exit_code == 0, listed.output
    versions = json.loads(listed.output)["versions"]
    challenger = next(v for v in versions if v["version"] != "lock-test-champion")
    assert challenger["parent"] == "lock-test-champion" and challenger["status"] == trained[0]
    shown = runner.invoke(app, ["models", "show", challenger["version"], "--registry", str(registry.root)])
    assert shown.exit_code == 0 and json.loads(shown.output)["gate"]["outcome"] == trained[0]
    if trained[0] == "rejected":
        promoted = runner.invoke(app, ["models", "promote", challenger["version"], "--registry", str(registry.root)])
        assert promoted.exit_code == 0, promoted.output
    rolled = runner.invoke(app, ["models", "rollback", "--registry", str(registry.root)])
    assert rolled.exit_code == 0, rolled.output
    assert read_alias_state(registry.root).aliases["champion"] == "lock-test-champion"
    again = runner.invoke(app, ["models", "rollback", "--registry", str(registry.root)])
    assert again.exit_code == 1 and "nothing to roll back" in again.output


@pytest.mark.postgres
def test_a_learner_killed_mid_run_leaves_the_champion_and_the_next_run_starts_cleanly(
    postgres_url: str, cc0_dir: Path, tmp_path: Path
) -> None:
    import time

    env = _prepare(tmp_path, postgres_url, cc0_dir)
    registry = ModelRegistry(env["SHELFSIGHT_LEARNER__REGISTRY_DIR"])
    before = read_alias_state(registry.root)
    store = ProductStore(postgres_url)
    learner = RetrainingStore(store)
    command = [sys.executable, "-m", "daemon.cli", "learn", "--once"]
    victim = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(r.status == "running" for r in learner.runs()) and time.monotonic() < deadline:
        assert victim.poll() is None, "the learner ended before it could be killed"
        time.sleep(0.05)
    time.sleep(1.0)  # inside the run: data assembly or training
    victim.kill()
    victim.wait(60)
    assert read_alias_state(registry.root) == before  # the champion is untouched
    assert [r.status for r in learner.runs()] == ["running"]

    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    statuses = [r.status for r in learner.runs()]  # newest first
    assert statuses[1] == "abandoned" and statuses[0] in ("promoted", "rejected"), statuses
    assert not list((tmp_path / "work" / "runs").iterdir())
    store.close()
