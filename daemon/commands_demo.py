"""`shelfsight demo`: the embedded default, end to end, with no external service.

It needs nothing but this repository: it trains a small model on the CC0 clothing photos shipped in
`deploy/demo/clothing-cc0` if none exists yet, writes one new-product event per photo into the local
event directory, runs the daemon on them with the local SQLite database, and prints the enriched
products. It must not need a broker, a database server or the network.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import typer

from daemon.cli_support import configure_logging, fail

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_IMAGES = REPO_ROOT / "deploy" / "demo" / "clothing-cc0"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def demo_command(
    images: Path = typer.Option(DEMO_IMAGES, help="Labelled image directory (labels.csv + images/)."),
    limit: int = typer.Option(40, help="How many products to publish."),
    home: Path = typer.Option(Path(".shelfsight/demo"), help="Where the demo keeps its model, events and DB."),
) -> None:
    """Enrich the bundled CC0 product photos end to end with no external service, and print the result."""
    from daemon.config import FetchSettings, LocalSourceSettings, Settings
    from daemon.service import StartupError, run_service

    home = home.resolve()
    model = home / "models" / "demo.safetensors"
    events = home / "events"
    db = home / "shelfsight.db"
    configure_logging("INFO")
    if not model.is_file():
        typer.echo(f"no demo model yet: training one on {images} (a few minutes on CPU) ...", err=True)
        _train_demo_model(images, model)
    events.mkdir(parents=True, exist_ok=True)
    photos = sorted((images / "images").glob("*.jpg"))[:limit]
    for i, photo in enumerate(photos):
        event = {
            "schema_version": 1,
            "product_id": f"demo-{photo.stem[:8]}",
            "image_urls": [photo.resolve().as_uri()],
            "title": f"Demo product {i + 1}",
            "event_id": f"demo-event-{i + 1}",
        }
        (events / f"demo-{i:04d}.json").write_text(json.dumps(event))
    settings = Settings(
        source="local",
        model_path=model,
        database_url=f"sqlite:///{db}",
        http_port=0,
        local=LocalSourceSettings(events_dir=events, exit_when_idle=True),
        fetch=FetchSettings(file_root=images.resolve()),
    )
    try:
        run_service(settings)
    except StartupError as exc:
        raise fail(str(exc), 2) from None
    _print_products(db, events)


def _train_demo_model(images: Path, out: Path) -> None:
    from learner.model.taxonomy import load_taxonomy
    from learner.training.data import load_labelled_set
    from learner.training.recipe import TrainConfig
    from learner.training.train import train

    taxonomy = load_taxonomy(REPO_ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")
    data = load_labelled_set(images, taxonomy)
    # a quick recipe: 255 photos, a few minutes on two CPU cores; good enough to show the pipeline working
    result = train(TrainConfig(epochs=8, patience=0), data, out)
    summary = result.test["summary"] if result.test else {}
    typer.echo(f"demo model trained in {result.elapsed_s:.0f}s; held-out figures: {summary}", err=True)


def _print_products(db: Path, events: Path) -> None:
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT p.product_id, p.title, a.attribute, a.value, a.confidence, a.model_version "
        "FROM products p JOIN product_attributes a ON a.product_id = p.product_id "
        "ORDER BY p.product_id, a.attribute"
    ).fetchall()
    con.close()
    products: dict[str, list[str]] = {}
    version = ""
    for pid, title, attr, value, conf, mv in rows:
        products.setdefault(f"{pid}  {title or ''}", []).append(f"{attr}={value} ({conf:.2f})")
        version = mv or version
    typer.echo(f"\n{len(products)} products enriched by model {version} (database {db}):")
    for name, attrs in products.items():
        typer.echo(f"  {name:<32} {'  '.join(attrs)}")
    dead = sorted((events / "dead-letter").glob("*.json"))
    if dead:
        typer.echo(f"{len(dead)} events dead-lettered (see {events / 'dead-letter'})")
