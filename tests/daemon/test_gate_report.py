"""`shelfsight models gate-report` (daemon/commands_models.py): every recorded gate decision with its statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from daemon.cli import app
from learner.evaluation.gate import GateConfig, decide, scores_from_rows
from learner.lifecycle.registry import ModelRegistry


def _vetoed_winner() -> dict[str, object]:
    """A real decision: garment much better, kids a third worse (a significant regression beyond the margin)."""
    true = np.arange(300) % 3
    rows_a = [(f"p{i}", "garment", int(t), int((t + 1) % 3)) for i, t in enumerate(true)]
    rows_a += [(f"p{i}", "kids", int(t), int(t)) for i, t in enumerate(true)]
    rows_b = [(f"p{i}", "garment", int(t), int(t)) for i, t in enumerate(true)]
    rows_b += [(f"p{i}", "kids", int(t), int(t if i % 3 else (t + 1) % 3)) for i, t in enumerate(true)]
    decision = decide(
        {"groups": {}}, {"groups": {}}, scores_from_rows(rows_a), scores_from_rows(rows_b), GateConfig(500)
    )
    assert not decision.promote and decision.significant_win
    return {"run_id": 7, "champion": "v1", **decision.to_dict()}


def test_gate_report_prints_each_decision_with_its_intervals_supports_and_reasons(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    old = {  # recorded before the group veto was a bootstrap
        "run_id": 6,
        "promote": False,
        "outcome": "rejected",
        "reasons": ["wins: ...", "group regression beyond the margin: kids/macro_f1: -0.0350 (margin 0.0200)"],
        "bootstrap": {
            "difference": 0.025,
            "low": 0.0172,
            "high": 0.0334,
            "samples": 2000,
            "products": 512,
            "champion": 0.7,
            "challenger": 0.725,
        },
        "group_deltas": {"kids": {"top1": -0.004, "macro_f1": -0.035}},
        "regressions": ["kids/macro_f1: -0.0350 (margin 0.0200)"],
        "config": {"confidence": 0.95, "max_group_regression": 0.02},
    }
    registry.record_decision("v2", old)
    registry.record_decision("v3", _vetoed_winner())
    result = CliRunner().invoke(app, ["models", "gate-report", "--registry", str(registry.root)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "run 6  v2  rejected  (vetoes: group_regression)" in out
    assert "95% CI [+0.0172, +0.0334] over 512 products (2000 paired resamples)" in out
    assert "groups (point estimates, margin 0.0200):" in out and "kids/macro_f1" in out
    assert "run 7  v3  rejected  (vetoes: group_regression)" in out
    assert "groups: veto when the upper bound < -0.0200; macro-F1 over classes with >= 5 holdout images" in out
    kids = next(line for line in out.splitlines() if "kids/top1" in line and "VETO" in line)
    assert "300 images, 300 products" in kids and "[-" in kids
    assert "3 classes (0 below support), 300 images, 300 products" in out
    assert out.rstrip().endswith("consecutive significant winners vetoed: 2")

    as_json = CliRunner().invoke(
        app, ["models", "gate-report", "--last", "1", "--json", "--registry", str(registry.root)]
    )
    report = json.loads(as_json.output)
    assert report["vetoed_wins_consecutive"] == 2 and len(report["decisions"]) == 1
    assert report["decisions"][0]["vetoes"] == ["group_regression"] and report["decisions"][0]["group_tests"]


def test_gate_report_on_an_empty_registry_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "gate-report", "--registry", str(tmp_path)])
    assert result.exit_code == 0 and "no gate decisions recorded" in result.output
