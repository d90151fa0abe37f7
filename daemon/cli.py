"""The `shelfsight` command line: the composition root that reads configuration and wires learner and
connectors together. Each command family lives in its own `commands_*.py` module and registers itself
here; this file only assembles the app.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="shelfsight",
    help="ShelfSight: tag product images with catalog attributes, stream them into the product database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """ShelfSight command line."""


def _register() -> None:
    from daemon import commands_run, commands_tag

    commands_tag.register(app)
    commands_run.register(app)
    # `train` / `evaluate` import the training stack (torch) for the recipe's defaults; the daemon (`shelfsight run`)
    # does not need them, and on the onnxruntime backend it must not load torch (tests/daemon/test_torch_free_serving)
    if sys.argv[1:2] != ["run"]:
        from daemon import commands_learner

        commands_learner.register(app)
    __import__("daemon.commands_review", fromlist=["register"]).register(app)
    __import__("daemon.commands_learn", fromlist=["register"]).register(app)
    __import__("daemon.commands_models", fromlist=["register"]).register(app)


_register()

if __name__ == "__main__":  # pragma: no cover
    app()
