"""`shelfsight tag`: tag images or URLs with a model bundle (filled in below)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def tag() -> None:
        """Tag product images (work in progress)."""
        raise typer.Exit(2)
