"""`shelfsight models list | show | register | promote | rollback`: the model registry from the command line.

The registry is `learner.registry_dir` of the configuration (`--registry` overrides it). Promote and rollback
change the `champion` alias atomically; daemons that watch the registry reload the new champion by themselves.
Expected failures print one `error: ...` line and exit with status 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

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
