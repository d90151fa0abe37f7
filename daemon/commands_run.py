"""`shelfsight run`: the enrichment daemon (events in, tagged attributes in the product database).

This file turns the command line into `Settings` and hands them to `daemon.service`; the daemon itself
(composition, signals, shutdown) lives there.
"""

from __future__ import annotations

from pathlib import Path

import typer

from daemon.cli_support import CONFIG_OPTION, configure_logging, enable_stack_dumps, fail, load_settings


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)


def run_command(config: Path | None = CONFIG_OPTION) -> None:
    """Run the enrichment daemon: events in, tagged attributes in the product database."""
    from daemon.service import StartupError, run_service

    settings = load_settings(config)
    configure_logging(settings.log_level)
    enable_stack_dumps()
    try:
        raise typer.Exit(run_service(settings))
    except StartupError as exc:
        raise fail(str(exc), 2) from None
