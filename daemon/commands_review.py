"""`shelfsight review run|status|sync`: the review loop's worker and its two operator commands.

- `run`: the review worker (daemon/review/) until SIGTERM/SIGINT: outbox -> Label Studio, webhook receiver,
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
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from daemon.cli_support import CONFIG_OPTION, configure_logging, enable_stack_dumps, fail, load_settings

if TYPE_CHECKING:
    from daemon.config import Settings
    from daemon.review.worker import ReviewWorker, ReviewWorkerOptions


def register(app: typer.Typer) -> None:
    review = typer.Typer(
        name="review",
        help="Review loop: low-confidence products to Label Studio, corrections back into the catalog.",
        no_args_is_help=True,
    )
    review.command("run")(run_command)
    review.command("status")(status_command)
    review.command("sync")(sync_command)
    app.add_typer(review, name="review")


def _worker(settings: Settings, worker_options: ReviewWorkerOptions | None = None) -> ReviewWorker:
    from daemon.config import ReviewConfigError
    from daemon.review.worker import build_review_worker

    try:
        return build_review_worker(settings, worker_options=worker_options)
    except ReviewConfigError as exc:
        raise fail(str(exc), 2) from None


def run_command(config: Path | None = CONFIG_OPTION) -> None:
    """Run the review worker until SIGTERM/SIGINT."""
    settings = load_settings(config)
    configure_logging(settings.log_level)
    enable_stack_dumps()
    worker = _worker(settings)

    def on_signal(signum: int, _frame: Any) -> None:
        worker.stop_event.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    worker.run_forever()


def status_command(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Queue depth, tasks sent and completed, and model-human agreement per attribute group."""
    from connectors.db import DatabaseUnavailable, ProductStore, ReviewStore

    settings = load_settings(config)
    store = ProductStore(settings.database_url)
    try:
        store.migrate()
        stats = ReviewStore(store).stats()
    except DatabaseUnavailable as exc:
        raise fail(str(exc), 2) from None
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


def sync_command(
    config: Path | None = CONFIG_OPTION,
    full: bool = typer.Option(False, "--full", help="Poll every task, not only those changed since the watermark."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Send the tasks Label Studio refused again."),
) -> None:
    """Send every pending routed product and pull every new annotation, now."""
    from daemon.review.worker import ReviewWorkerOptions

    settings = load_settings(config)
    configure_logging(settings.log_level)
    worker = _worker(settings, worker_options=ReviewWorkerOptions(webhook_port=None))
    report = worker.sync(full=full, retry_failed=retry_failed)
    typer.echo(f"sent {report.sent} tasks, {report.failed} refused; polled {report.tasks_polled} changed tasks")
    if report.unavailable:
        typer.echo(f"error: {report.unavailable}", err=True)
        raise typer.Exit(1)
