"""`shelfsight report`: a static HTML page of the enriched products in a product database.

One file, photos embedded as thumbnails (file:// images; http(s) images are linked, not fetched), each product with
its attributes, confidences, auto-filled or suggested, and the model version (daemon/report.py renders it). Works on
any ShelfSight database, SQLite or PostgreSQL; it only reads.
"""

from __future__ import annotations

from pathlib import Path

import typer

from daemon.cli_support import CONFIG_OPTION, fail, load_settings


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)


def report_command(
    database: str | None = typer.Option(None, "--database", help="Database URL (default: the configured one)."),
    out: Path | None = typer.Option(None, "--out", help="HTML file to write (default: report.html beside the data)."),
    limit: int = typer.Option(200, "--limit", min=1, help="The most recently updated products shown."),
    file_root: Path | None = typer.Option(None, help="Embed only file:// images inside this directory."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Write an HTML report of the enriched products: photo, attributes, confidence, auto-filled or suggested."""
    from sqlalchemy.exc import SQLAlchemyError

    from connectors.db import DatabaseUnavailable, ProductStore
    from connectors.db.report_view import read_report_products
    from daemon.config import HOME, redact_url
    from daemon.report import count_values, write_report

    url = database or load_settings(config).database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise fail(f"no database at {url.removeprefix('sqlite:///')}: run `shelfsight demo` or `shelfsight run` first")
    target = out or HOME / "report.html"
    try:
        store = ProductStore(url)
        try:
            snapshot = read_report_products(store, limit)
        finally:
            store.close()
        path = write_report(snapshot, target, source=redact_url(url), file_root=file_root)
    except (DatabaseUnavailable, SQLAlchemyError, OSError) as exc:
        raise fail(f"cannot write the report from {redact_url(url)}: {str(exc).splitlines()[0]}") from None
    counts = count_values(snapshot)
    typer.echo(
        f"report of {counts.products} products ({counts.auto_filled} values auto-filled, {counts.suggested} "
        f"suggestions) written to {path.resolve()}"
    )
