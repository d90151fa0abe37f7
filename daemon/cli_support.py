"""What every `shelfsight` command shares: the `--config` option, loading settings with a clean error, logging
setup, and one-line failures.

Commands (`daemon/commands_*.py`) import from here and never from each other. This module is loaded by
`shelfsight --help`, so it must not import anything heavy at import time (configuration, models, clients are
imported inside the functions that need them), and it holds no command logic.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from daemon.config import Settings

CONFIG_OPTION = typer.Option(None, "--config", help="TOML configuration file (or SHELFSIGHT_CONFIG).")


def load_settings(config: Path | None = None) -> Settings:
    """The settings (environment, then `config` or SHELFSIGHT_CONFIG); on invalid ones, one line on stderr and exit 2.

    A `config` file given on the command line is exported as SHELFSIGHT_CONFIG, so child processes (the learner's
    runs) read the same file.
    """
    from pydantic import ValidationError

    from daemon.config import Settings

    if config is not None:
        os.environ["SHELFSIGHT_CONFIG"] = str(config)
    try:
        return Settings()
    except (ValidationError, FileNotFoundError) as exc:
        typer.echo(f"error: invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from None


def configure_logging(level: str) -> None:
    """Log lines with time, level and logger to stderr; the chatty client libraries only from WARNING up."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr and return the exit to raise (`raise fail(...) from None`)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)
