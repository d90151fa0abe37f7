"""The `shelfsight` command line: the composition root that reads configuration and wires learner and
connectors together.

Each command family lives in `daemon/commands_<family>.py` and exposes `register(app)`, which adds its
commands (or its sub-app) to the app; this file only assembles them, in the order `--help` lists them.
What they share (settings with a clean error, logging, one-line failures) is in `daemon/cli_support.py`;
command modules never import each other. Command modules import heavy libraries inside their commands,
so `shelfsight --help` stays quick.
"""

from __future__ import annotations

import typer

from daemon import (
    commands_bundle,
    commands_data,
    commands_demo,
    commands_learn,
    commands_models,
    commands_precision,
    commands_report,
    commands_review,
    commands_run,
    commands_tag,
    commands_train,
)

app = typer.Typer(
    name="shelfsight",
    help="ShelfSight: tag product images with catalog attributes, stream them into the product database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # plain click help: rich's tables put a type column (`<bool>`) beside plain flags and cut long option names
    # at 80 columns
    rich_markup_mode=None,
)


@app.callback()
def main() -> None:
    """ShelfSight command line."""


for family in (
    commands_tag,  # tag
    commands_run,  # run
    commands_demo,  # demo
    commands_report,  # report
    commands_train,  # train, evaluate
    commands_review,  # review run | status | sync
    commands_learn,  # learn
    commands_models,  # models list | show | register | promote | rollback | gate-report
    commands_bundle,  # models calibrate | add-title | export | shrink (added to the `models` sub-app above)
    commands_precision,  # models precision | resume (added to the `models` sub-app above)
    commands_data,  # data issues
):
    family.register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
