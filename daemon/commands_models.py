"""`shelfsight models list | show | register | promote | rollback | gate-report`: the model registry from the command
line. This module makes the `models` sub-app; daemon/commands_bundle.py (calibrate, add-title, export, shrink: one
bundle file) and daemon/commands_precision.py (precision, resume) add their commands to it.

The registry is `learner.registry_dir` of the configuration (`--registry` overrides it). Promote and rollback
change the `champion` alias atomically; daemons that watch the registry reload the new champion by themselves.
Expected failures print one `error: ...` line and exit with status 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from daemon.cli_support import fail, load_settings

if TYPE_CHECKING:
    from learner.lifecycle.registry import ModelRegistry


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="The model registry: versions, champion and previous, promote and rollback.")
    models.command("list")(list_command)
    models.command("show")(show_command)
    models.command("register")(register_command)
    models.command("promote")(promote_command)
    models.command("rollback")(rollback_command)
    models.command("gate-report")(gate_report_command)
    app.add_typer(models, name="models")


RegistryOption = typer.Option(None, "--registry", help="Registry directory (default: learner.registry_dir).")


def _registry(registry: Path | None) -> ModelRegistry:
    from learner.lifecycle.registry import ModelRegistry

    return ModelRegistry(registry if registry is not None else load_settings().learner.registry_dir)


def list_command(registry: Path | None = RegistryOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every registered version, oldest first, with its aliases, parent and holdout figure."""
    reg = _registry(registry)
    state = reg.aliases()
    by_version = {v: a for a, v in state.aliases.items()}
    rows = []
    for record in reg.versions():
        holdout = (record.data.get("holdout") or {}).get("summary", {})
        rows.append(
            {
                "version": record.version,
                "alias": by_version.get(record.version, ""),
                "status": record.data.get("status", "registered"),
                "parent": record.parent or "",
                "registered_at": record.registered_at,
                "holdout_mean_top1": holdout.get("mean_top1"),
            }
        )
    if as_json:
        typer.echo(json.dumps({"generation": state.generation, "aliases": state.aliases, "versions": rows}, indent=2))
        return
    if not rows:
        typer.echo(f"no versions in {reg.root}")
        return
    for r in rows:
        figure = "" if r["holdout_mean_top1"] is None else f"holdout mean_top1 {r['holdout_mean_top1']:.4f}"
        alias = f"[{r['alias']}]" if r["alias"] else ""
        typer.echo(f"{r['version']:<60} {alias:<11} {r['status']:<10} {r['registered_at']}  {figure}".rstrip())


def show_command(
    name: str = typer.Argument(..., help="A version, or champion / previous."), registry: Path | None = RegistryOption
) -> None:
    """A version's record as JSON: parent, data snapshot, metrics, holdout figures, gate decision."""
    from learner.lifecycle.registry import RegistryError

    reg = _registry(registry)
    try:
        version = reg.version_of(name)
        record = reg.get(version)
    except RegistryError as exc:
        raise fail(str(exc)) from None
    aliases = [a for a, v in reg.aliases().aliases.items() if v == version]
    typer.echo(
        json.dumps({**record.data, "aliases": aliases, "path": str(reg.resolve(version))}, indent=2, default=str)
    )


def register_command(
    bundle: Path = typer.Argument(..., help="A model bundle (.safetensors)."),
    promote: bool = typer.Option(False, "--promote", help="Also make it the champion."),
    registry: Path | None = RegistryOption,
) -> None:
    """Add a bundle to the registry under its model version (e.g. the first champion from `shelfsight train`)."""
    from learner.lifecycle.registry import RegistryError

    reg = _registry(registry)
    try:
        record = reg.register(bundle, source=str(bundle), status="registered")
        if promote:
            reg.promote(record.version, reason="registered with --promote")
    except RegistryError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"registered {record.version}" + (" as champion" if promote else ""))


def promote_command(
    version: str = typer.Argument(...),
    reason: str = typer.Option("manual promotion", help="Recorded with the alias change."),
    registry: Path | None = RegistryOption,
) -> None:
    """Make a registered version the champion (bypasses the gate: the reason is recorded)."""
    from learner.lifecycle.registry import RegistryError

    reg = _registry(registry)
    try:
        state = reg.promote(version, reason=reason)
    except RegistryError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"champion {state.aliases['champion']} (previous {state.aliases.get('previous', '-')})")


def rollback_command(
    reason: str = typer.Option("manual rollback", help="Recorded with the alias change."),
    registry: Path | None = RegistryOption,
) -> None:
    """Make the previous champion the champion again."""
    from learner.lifecycle.registry import RegistryError

    reg = _registry(registry)
    try:
        state = reg.rollback(reason=reason)
    except RegistryError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"champion {state.aliases['champion']} (previous {state.aliases.get('previous', '-')})")


def gate_report_command(
    registry: Path | None = RegistryOption,
    last: int = typer.Option(0, "--last", min=0, help="Only the last N decisions (0: all)."),
    as_json: bool = typer.Option(False, "--json", help="The decisions' gate statistics as JSON."),
) -> None:
    """Every recorded promotion decision, oldest first, with its statistics: the win interval, each group's interval
    and support, detection mAP, the outcome and its reasons; then the current streak of vetoed significant
    winners (what the learner's ShelfSightGateVetoingWinners alert counts)."""
    from learner.evaluation.gate import vetoed_win_streak, vetoes_of

    decisions = _registry(registry).decisions()
    streak = vetoed_win_streak(decisions)
    shown = decisions[-last:] if last else decisions
    keys = ("version", "decided_at", "run_id", "champion", "outcome", "reasons", "bootstrap", "group_tests")
    if as_json:
        rows = [{**{k: d.get(k) for k in keys}, "vetoes": vetoes_of(d), "detection": d.get("detection")} for d in shown]
        typer.echo(json.dumps({"decisions": rows, "vetoed_wins_consecutive": streak}, indent=2, default=str))
        return
    if not decisions:
        typer.echo("no gate decisions recorded")
        return
    for d in shown:
        for line in _decision_lines(d):
            typer.echo(line)
    typer.echo(f"consecutive significant winners vetoed: {streak}")


def _interval(low: Any, high: Any) -> str:
    return "not tested" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def _decision_lines(d: dict[str, Any]) -> Iterator[str]:
    """The lines `gate-report` prints for one recorded decision: the outcome, the win interval, each group's
    interval and support, detection mAP and the reasons."""
    from learner.evaluation.gate import vetoes_of

    config = d.get("config") or {}
    pct = round(float(config.get("confidence", 0.95)) * 100)
    vetoes = vetoes_of(d)
    head = f"{d.get('decided_at', '?')}  run {d.get('run_id', '-')}  {d.get('version', '?')}"
    head += f"  {d.get('outcome', '?')}"
    yield head + (f"  (vetoes: {', '.join(vetoes)})" if vetoes else "")
    boot = d.get("bootstrap")
    if boot:
        yield (
            f"  win: mean_top1 {boot['challenger']:.4f} vs {boot['champion']:.4f}, {boot['difference']:+.4f}, "
            f"{pct}% CI {_interval(boot['low'], boot['high'])} over {boot['products']} products "
            f"({boot['samples']} paired resamples)"
        )
    tests = d.get("group_tests")
    margin = float(config.get("max_group_regression", 0.02))
    if tests:
        yield (
            f"  groups: veto when the upper bound < -{margin:.4f}; macro-F1 over classes with >= "
            f"{config.get('min_class_support', '?')} holdout images"
        )
        for t in tests:
            diff = "" if t.get("difference") is None else f"{t['difference']:+.4f}"
            support = f"{t.get('images', 0)} images, {t.get('products', 0)} products"
            if t.get("figure") == "macro_f1" and t.get("classes") is not None:
                support = f"{t['classes']} classes ({t.get('excluded_classes', 0)} below support), " + support
            high = t.get("high")
            flag = "  VETO" if high is not None and high < -margin - 1e-12 else ""
            note = f"  ({t['note']})" if t.get("note") else ""
            name = f"{t.get('group')}/{t.get('figure')}"
            yield f"    {name:<32} {diff:>8}  {_interval(t.get('low'), high):<20} {support}{flag}{note}"
    elif d.get("group_deltas"):  # recorded before the group veto was a bootstrap: point estimates only
        yield f"  groups (point estimates, margin {margin:.4f}):"
        for group, figures in d["group_deltas"].items():
            for figure, diff in figures.items():
                yield f"    {group + '/' + figure:<32} {diff:+.4f}"
    detection = d.get("detection")
    if detection:
        yield (
            f"  detection: mAP@[.5:.95] {detection['challenger']:.4f} vs {detection['champion']:.4f}, "
            f"{detection['difference']:+.4f} (point estimate)"
        )
    for reason in d.get("reasons") or []:
        yield f"  - {reason}"
