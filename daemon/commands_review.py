"""`shelfsight review run|status|sync`: the review loop's worker and its two operator commands.

- `run`: the review worker (daemon/review.py) until SIGTERM/SIGINT: outbox -> Label Studio, webhook receiver,
  incremental polling; /metrics and /healthz on the webhook port.
- `status`: the queue as the product database sees it (no Label Studio needed): routed products waiting to be
  sent, tasks sent, completed and waiting for annotators, refused ones, and model-human agreement per group.
- `sync`: one pass now: send everything pending (ignoring backoff), then poll every change since the watermark
  (`--full`: every task). Exits 1 when Label Studio is unavailable (nothing is lost: run it again later).

Configuration as for `shelfsight run` (SHELFSIGHT_REVIEW__* or the [review] table of the TOML file). Expected
failures print one line on stderr and exit 2, without a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import typer

review_app = typer.Typer(
    name="review",
    help="Review loop: low-confidence products to Label Studio, corrections back into the catalog.",
    no_args_is_help=True,
)

CONFIG_OPTION = typer.Option(None, "--config", help="TOML configuration file (or SHELFSIGHT_CONFIG).")


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")


def _settings(config: Path | None) -> Any:
    from pydantic import ValidationError

    from daemon.config import Settings

    if config is not None:
        os.environ["SHELFSIGHT_CONFIG"] = str(config)
    try:
        return Settings()
    except (ValidationError, FileNotFoundError) as exc:
        typer.echo(f"error: invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from None


def _worker(settings: Any, **kwargs: Any) -> Any:
    from daemon.config import ReviewConfigError
    from daemon.review.worker import build_review_worker

    try:
        return build_review_worker(settings, **kwargs)
    except ReviewConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@review_app.command("run")
def run_command(config: Path | None = CONFIG_OPTION) -> None:
    """Run the review worker until SIGTERM/SIGINT."""
    from daemon.service import configure_logging

    settings = _settings(config)
    configure_logging(settings.log_level)
    worker = _worker(settings)

    def on_signal(signum: int, _frame: Any) -> None:
        worker.stop_event.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    worker.run_forever()


@review_app.command("status")
def status_command(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Queue depth, tasks sent and completed, and model-human agreement per attribute group."""
    from connectors.db import DatabaseUnavailable, ProductStore, ReviewStore

    settings = _settings(config)
    store = ProductStore(settings.database_url)
    try:
        store.migrate()
        stats = ReviewStore(store).stats()
    except DatabaseUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        store.close()
    agreement = {
        group: {"model_right": right, "reviewed": judged, "ratio": round(right / judged, 4) if judged else None}
        for group, (right, judged) in sorted(stats.agreement.items())
    }
    report = {
        "queue_depth": stats.pending,
        "sent": stats.sent,
        "completed": stats.completed,
        "waiting_for_annotators": stats.backlog,
        "failed": stats.failed,
        "annotations": stats.annotations,
        "skipped": stats.skipped,
        "agreement": agreement,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"queue depth (routed, not yet in Label Studio): {stats.pending}")
    typer.echo(f"sent to Label Studio:                          {stats.sent}")
    typer.echo(f"  completed (annotated or skipped):            {stats.completed}")
    typer.echo(f"  waiting for annotators:                      {stats.backlog}")
    typer.echo(f"refused by Label Studio (failed):              {stats.failed}")
    typer.echo(f"annotations: {stats.annotations} ({stats.skipped} skipped)")
    if agreement:
        typer.echo("model-human agreement:")
        for group, a in agreement.items():
            typer.echo(f"  {group:<24} {a['model_right']:>6} / {a['reviewed']:<6} {a['ratio']:.1%}")
    else:
        typer.echo("model-human agreement: no reviewed values yet")


@review_app.command("sync")
def sync_command(
    config: Path | None = CONFIG_OPTION,
    full: bool = typer.Option(False, "--full", help="Poll every task, not only those changed since the watermark."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Send the tasks Label Studio refused again."),
) -> None:
    """Send every pending routed product and pull every new annotation, now."""
    from daemon.review.worker import ReviewWorkerOptions
    from daemon.service import configure_logging

    settings = _settings(config)
    configure_logging(settings.log_level)
    worker = _worker(settings, worker_options=ReviewWorkerOptions(webhook_port=None))
    report = worker.sync(full=full, retry_failed=retry_failed)
    typer.echo(f"sent {report.sent} tasks, {report.failed} refused; polled {report.tasks_polled} changed tasks")
    if report.unavailable:
        typer.echo(f"error: {report.unavailable}", err=True)
        raise typer.Exit(1)
