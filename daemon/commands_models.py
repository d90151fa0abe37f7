"""`shelfsight models list | show | register | promote | rollback | export`: the model registry from the command line.

The registry is `learner.registry_dir` of the configuration (`--registry` overrides it). Promote and rollback
change the `champion` alias atomically; daemons that watch the registry reload the new champion by themselves.
Expected failures print one `error: ...` line and exit with status 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

models_app = typer.Typer(help="The model registry: versions, champion and previous, promote and rollback.")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _registry(registry: Path | None) -> Any:
    from learner.lifecycle.registry import ModelRegistry

    if registry is None:
        from daemon.commands_run import _settings_or_exit

        registry = _settings_or_exit().learner.registry_dir
    return ModelRegistry(registry)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


RegistryOption = typer.Option(None, "--registry", help="Registry directory (default: learner.registry_dir).")


@models_app.command("list")
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


@models_app.command("show")
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
        raise _fail(str(exc)) from None
    aliases = [a for a, v in reg.aliases().aliases.items() if v == version]
    typer.echo(
        json.dumps({**record.data, "aliases": aliases, "path": str(reg.resolve(version))}, indent=2, default=str)
    )


@models_app.command("register")
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
        raise _fail(str(exc)) from None
    typer.echo(f"registered {record.version}" + (" as champion" if promote else ""))


@models_app.command("promote")
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
        raise _fail(str(exc)) from None
    typer.echo(f"champion {state.aliases['champion']} (previous {state.aliases.get('previous', '-')})")


@models_app.command("rollback")
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
        raise _fail(str(exc)) from None
    typer.echo(f"champion {state.aliases['champion']} (previous {state.aliases.get('previous', '-')})")


@models_app.command("export")
def export_command(
    bundle: Path = typer.Argument(..., help="A model bundle (.safetensors)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Where to write it (default: beside the bundle, named by its SHA-256, where the "
        "onnxruntime backend looks for it).",
    ),
    images: Path | None = typer.Option(
        None, "--images", help="Directory of photos (*.jpg) for the parity check, e.g. the fashion-products images."
    ),
    photos: list[Path] = typer.Option([], "--photo", help="A photo for the parity check (repeatable)."),
    n: int = typer.Option(1000, "--n", help="Photos taken from --images."),
    max_abs_diff: float = typer.Option(1e-3, help="Largest tolerated |probability difference| per group."),
    min_top1_agreement: float = typer.Option(0.999, help="Smallest tolerated top-1 agreement per group."),
) -> None:
    """Export a bundle's classifier for the onnxruntime backend, refused when it disagrees with torch.

    The parity check runs torch and onnxruntime on the photos given (else on synthetic images) and refuses the
    export, with the figures, when any group's probabilities differ by more than --max-abs-diff or its top-1
    agreement is below --min-top1-agreement.
    """
    from learner.inference.onnx_export import ParityError, export_onnx
    from learner.inference.onnx_model import onnx_path_for
    from learner.model.manifest import BundleError, file_sha256

    if fmt != "onnx":
        raise _fail(f"--format {fmt!r} is not supported (onnx)")
    files = [*photos, *(sorted(images.glob("*.jpg"))[:n] if images is not None else [])]
    try:
        target = out or onnx_path_for(bundle, file_sha256(bundle))
        result = export_onnx(
            bundle,
            target,
            [f.read_bytes() for f in files],
            max_abs_diff=max_abs_diff,
            min_top1_agreement=min_top1_agreement,
        )
    except ParityError as exc:
        typer.echo(json.dumps(exc.report.to_dict(), indent=2))
        raise _fail(str(exc)) from None
    except (BundleError, OSError) as exc:
        raise _fail(str(exc)) from None
    parity = result.parity
    worst = max(parity.groups.values(), key=lambda g: g.max_abs_diff)
    typer.echo(
        f"exported {result.model_version} to {result.path} in {result.seconds:.0f}s; parity on {parity.images} "
        f"{'photos' if parity.source == 'photos' else 'synthetic images'}: max |dp| {worst.max_abs_diff:.1e}, "
        f"top-1 agreement >= {min(g.top1_agreement for g in parity.groups.values()):.2%}"
    )
