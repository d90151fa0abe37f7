"""`shelfsight models precision | resume`: the audited precision of auto-filled values, and ending a suspension.

- `precision`: per group and model version, the people's answers on auto-filled values (since the last resume), their
  precision and two-sided Wilson interval, the target, the label-free estimate (mean calibrated confidence of the
  stored auto-filled values) and the state (ok, too_few, below_target, suspended); then the open suspensions with
  their reasons. What the review worker measures and exports (daemon/review/audit.py), read from the database
  (no Label Studio needed).
- `resume GROUP`: end the group's suspension (of every model version, or `--model-version`): every enrichment daemon
  auto-fills it again within one `review.suspension_poll_s`, and its audit starts afresh.

Registered under `shelfsight models` by daemon/cli.py after daemon/commands_models.py made that sub-app. Expected
failures print one line on stderr and exit 2, without a traceback.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from daemon.cli_support import CONFIG_OPTION, fail, load_settings, sub_app

if TYPE_CHECKING:
    from connectors.db import ProductStore
    from daemon.config import Settings
    from learner.evaluation.audit import GroupAudit


def register(app: typer.Typer) -> None:
    """Add `precision` and `resume` to the `models` sub-app (which daemon/commands_models.py registered first)."""
    models = sub_app(app, "models", "daemon/commands_models.py")
    models.command("precision")(precision_command)
    models.command("resume")(resume_command)


def _store(settings: Settings) -> ProductStore:
    from connectors.db import DatabaseUnavailable, ProductStore

    store = ProductStore(settings.database_url)
    try:
        store.migrate()
    except DatabaseUnavailable as exc:
        store.close()
        raise fail(str(exc), 2) from None
    return store


def precision_command(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Audited precision of auto-filled values per group and model version, beside target and label-free estimate."""
    from connectors.db import AuditStore, DatabaseUnavailable, ReviewStore
    from daemon.metrics import ReviewMetrics
    from daemon.reload import ModelSource
    from daemon.review.audit import AutofillAudit, champion_reader

    settings = load_settings(config)
    r = settings.review
    store = _store(settings)
    try:
        audit = AutofillAudit(
            AuditStore(store),
            ReviewStore(store),
            ReviewMetrics(),
            champion_reader(ModelSource(settings.model_path, settings.registry_dir)),
            worker_id="cli",
            level=r.audit_level,
            min_audited=r.suspend_min_audited,
        )
        audits = audit.measure()
        suspensions = AuditStore(store).suspensions(open_only=True)
    except DatabaseUnavailable as exc:
        raise fail(str(exc), 2) from None
    finally:
        store.close()
    if as_json:
        report = {
            "groups": [_row(a) for a in audits],
            "suspensions": [
                {"group": s.group, "model_version": s.model_version, "since": s.suspended_at.isoformat()}
                | {"reason": s.reason, "by": s.suspended_by}
                for s in suspensions
            ],
        }
        typer.echo(json.dumps(report, indent=2))
        return
    if not audits:
        typer.echo("no auto-filled values and no answers yet")
    else:
        typer.echo(_table(audits))
    for s in suspensions:
        typer.echo(f"suspended since {s.suspended_at:%Y-%m-%d %H:%M} UTC: {s.group} of {s.model_version}: {s.reason}")
    if suspensions:
        typer.echo("resume with: shelfsight models resume GROUP")


def resume_command(
    group: str = typer.Argument(..., help="The attribute group whose auto-fill resumes."),
    model_version: str | None = typer.Option(None, "--model-version", help="Only this model version's suspension."),
    by: str | None = typer.Option(None, "--by", help="Who resumes it (recorded; default: operator:<login>)."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """End the auto-fill suspension of GROUP: every daemon auto-fills it again within one poll."""
    from connectors.db import AuditStore, DatabaseUnavailable

    settings = load_settings(config)
    store = _store(settings)
    who = by or f"operator:{getpass.getuser()}"
    try:
        ended = AuditStore(store).resume(group, by=who, model_version=model_version)
    except DatabaseUnavailable as exc:
        raise fail(str(exc), 2) from None
    finally:
        store.close()
    if not ended:
        typer.echo(f"auto-fill of {group} is not suspended" + (f" for {model_version}" if model_version else ""))
        return
    for s in ended:
        since = f"{s.suspended_at:%Y-%m-%d %H:%M}"
        typer.echo(f"auto-fill of {s.group} resumed for {s.model_version} (suspended since {since} UTC)")


def _row(a: GroupAudit) -> dict[str, Any]:
    return {
        "group": a.group,
        "model_version": a.model_version,
        "audited": a.audit.audited,
        "right": a.audit.right,
        "precision": a.audit.precision,
        "interval": [a.audit.lower, a.audit.upper],
        "level": a.audit.level,
        "target": a.target,
        "label_free": a.label_free,
        "label_free_values": a.label_free_values,
        "state": a.state,
    }


def _table(audits: list[GroupAudit]) -> str:
    interval = f"{audits[0].audit.level:.0%} interval"
    header = ("group", "model version", "audited", "precision", interval, "target", "label-free", "state")
    rows = [
        (
            a.group,
            a.model_version,
            str(a.audit.audited),
            "-" if a.audit.precision is None else f"{a.audit.precision:.3f}",
            f"[{a.audit.lower:.3f}, {a.audit.upper:.3f}]",
            f"{a.target:g}",
            "-" if a.label_free is None else f"{a.label_free:.3f} ({a.label_free_values})",
            a.state,
        )
        for a in audits
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows))
    return "\n".join(lines)
