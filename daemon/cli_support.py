"""What every `shelfsight` command shares: the `--config` option, loading settings with a clean error, logging
setup, and one-line failures.

Commands (`daemon/commands_*.py`) import from here and never from each other. This module is loaded by
`shelfsight --help`, so it must not import anything heavy at import time (configuration, models, clients are
imported inside the functions that need them), and it holds no command logic.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from daemon.config import Settings

CONFIG_OPTION = typer.Option(None, "--config", help="TOML configuration file (or SHELFSIGHT_CONFIG).")

# the starter model shipped with the repository (deploy/demo/build_starter.sh rebuilds it): what `shelfsight demo`
# serves, and what `shelfsight tag` falls back to when no champion is configured
STARTER_BUNDLE = Path(__file__).resolve().parent.parent / "deploy" / "demo" / "starter.safetensors"


def sub_app(app: typer.Typer, name: str, made_by: str) -> typer.Typer:
    """The sub-app `name` that another command module (`made_by`) registered on `app`, for a module adding its
    commands to it; RuntimeError when that module was not registered first (daemon/cli.py's order)."""
    found = next((g.typer_instance for g in app.registered_groups if g.name == name), None)
    if found is None:
        raise RuntimeError(f"register {made_by} (the `{name}` sub-app) first: daemon/cli.py's order")
    return found


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


def enable_stack_dumps() -> None:
    """`kill -USR1 PID` writes every thread's stack to stderr (the log) without stopping the process: what an
    operator (or the soak test) looks at when a long-running service seems stuck."""
    if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr and return the exit to raise (`raise fail(...) from None`)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def shown_path(path: Path) -> str:
    """`path` relative to the working directory when it lies under it (shorter to read and to paste), else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def default_model(settings: Settings) -> tuple[Path, str]:
    """The bundle a command uses when none is named, and why: the registry's champion (`registry_dir`, else
    `learner.registry_dir` when it has one), else the configured `model_path` when the file exists, else the starter
    model. Raises `typer.Exit` with a message when there is none at all."""
    from learner.lifecycle.registry import ModelRegistry, RegistryError

    registries = [r for r in (settings.registry_dir, settings.learner.registry_dir) if r is not None]
    for root in registries:
        if (root / "aliases.json").is_file():
            try:
                path = ModelRegistry(root).resolve("champion")
            except RegistryError:
                continue
            return path, f"the champion of the registry {shown_path(root)}"
    if settings.model_path.is_file():
        return settings.model_path, "model_path of the configuration"
    if STARTER_BUNDLE.is_file():
        return STARTER_BUNDLE, "the starter model that `shelfsight demo` uses"
    raise fail(
        f"no model: no registry champion, no bundle at {settings.model_path} and no starter model at {STARTER_BUNDLE} "
        "(rebuild it with `bash deploy/demo/build_starter.sh`); pass --model BUNDLE",
        2,
    )
