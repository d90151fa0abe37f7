"""`shelfsight demo`: the embedded default end to end, with no external service and no training.

It tags the CC0 clothing photos shipped in `deploy/demo/clothing-cc0` (user photos, not catalog photos, and never
seen by the model) with the starter model shipped in `deploy/demo/starter.safetensors` (trained on the
fashion-products catalog photos; `deploy/demo/build_starter.sh` rebuilds it): it writes one new-product event per
photo into the demo's local event directory, runs the daemon on them with review routing on and a local SQLite
database, copies the products routed for review into a local review queue file (when Label Studio is not
configured), writes the HTML report, prints every attribute group of the products with confidences and suggestion
marks, and ends with a summary. Each run starts from a clean demo directory. It must not need a broker, a database
server or the network, and it must not train (a missing starter model is an error that says how to build it).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from connectors.records import TITLE_PHOTO_CONFLICT
from daemon.cli_support import STARTER_BUNDLE, configure_logging, fail, load_settings, shown_path
from learner.model.shift_guard import UNFAMILIAR_PHOTO

if TYPE_CHECKING:
    from connectors.db.report_view import CatalogSnapshot, ReportedProduct

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_IMAGES = REPO_ROOT / "deploy" / "demo" / "clothing-cc0"
SUGGESTION_MARK = "?"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def demo_command(
    images: Path = typer.Option(DEMO_IMAGES, help="Photo directory (images/*.jpg, labels.csv optional)."),
    limit: int = typer.Option(40, min=1, help="How many products to publish."),
    show: int = typer.Option(10, min=0, help="How many products to print here (the report has them all)."),
    model: Path = typer.Option(STARTER_BUNDLE, "--model", help="Model bundle (default: the shipped starter model)."),
    home: Path = typer.Option(Path(".shelfsight/demo"), help="Where the demo keeps its events, database and report."),
) -> None:
    """Tag the bundled CC0 user photos with the starter model end to end (no external service), then summarise."""
    from daemon.config import FetchSettings, LocalSourceSettings, Settings
    from daemon.service import StartupError, run_service

    started = time.monotonic()
    if not model.is_file():
        raise fail(
            f"no model bundle at {model}. The repository ships the starter model there; rebuild it with "
            "`bash deploy/demo/build_starter.sh` (trains on ../shared/data/fashion-products, about 25 minutes on "
            "two CPU cores), or pass --model BUNDLE",
            2,
        )
    configured = load_settings().review
    label_studio = configured.label_studio_token is not None
    home = home.resolve()
    events, db = home / "events", home / "shelfsight.db"
    queue_file, report_file = home / "review-queue.jsonl", home / "report.html"
    _clean(home, events, db, queue_file, report_file)
    photos = _publish(images, events, limit)
    typer.echo(
        f"publishing {len(photos)} new-product events for CC0 user photos from {shown_path(images)} (photos people "
        f"took, not catalog photos; the model never saw them) and enriching them with {shown_path(model)} ...",
        err=True,
    )
    configure_logging("INFO")
    settings = Settings(
        source="local",
        model_path=model,
        database_url=f"sqlite:///{db}",
        http_port=0,
        reload_interval_s=0,
        local=LocalSourceSettings(events_dir=events, exit_when_idle=True),
        fetch=FetchSettings(file_root=images.resolve()),
        review=configured.model_copy(
            update={"enabled": True, "audit_rate": 0.0, "max_per_hour": None, "max_per_day": None}
        ),
    )
    try:
        run_service(settings)
    except StartupError as exc:
        raise fail(str(exc), 2) from None

    snapshot, routed = _read_results(db, report_file, images, queue_file, label_studio)
    _print_products(snapshot, photos, show, model)
    _print_summary(snapshot, routed, label_studio, events, db, model, report_file, queue_file, photos, started)


def _clean(home: Path, events: Path, db: Path, *files: Path) -> None:
    """Start from nothing: only what an earlier demo run left in `home` is removed."""
    home.mkdir(parents=True, exist_ok=True)
    if events.is_dir():
        shutil.rmtree(events)
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), *files):
        path.unlink(missing_ok=True)


def _publish(images: Path, events: Path, limit: int) -> dict[str, tuple[Path, str]]:
    """One event per photo, without a title (the CC0 photos have none; a made-up one would be read by a bundle's
    title model as if it described the product); returns product id -> (photo, the photo set's own label, if it has
    labels.csv)."""
    labels: dict[str, str] = {}
    csv = images / "labels.csv"
    if csv.is_file():
        import csv as csv_module

        with csv.open(newline="") as f:
            labels = {row["image"]: row.get("label", "") for row in csv_module.DictReader(f) if row.get("image")}
    events.mkdir(parents=True, exist_ok=True)
    photos = sorted((images / "images").glob("*.jpg"))[:limit]
    if not photos:
        raise fail(f"no photos (*.jpg) in {images / 'images'}", 2)
    published: dict[str, tuple[Path, str]] = {}
    for i, photo in enumerate(photos):
        product_id = f"demo-{photo.stem[:8]}"
        event = {
            "schema_version": 1,
            "product_id": product_id,
            "image_urls": [photo.resolve().as_uri()],  # and no title (see above)
            "event_id": f"demo-event-{i + 1}",
        }
        (events / f"demo-{i:04d}.json").write_text(json.dumps(event))
        published[product_id] = (photo, labels.get(photo.stem, ""))
    return published


def _read_results(
    db: Path, report_file: Path, images: Path, queue_file: Path, label_studio: bool
) -> tuple[CatalogSnapshot, int]:
    from connectors.db import ProductStore, ReviewStore
    from connectors.db.report_view import read_report_products
    from connectors.records import payload_to_json
    from daemon.report import write_report

    store = ProductStore(f"sqlite:///{db}")
    try:
        snapshot = read_report_products(store, limit=10_000)
        pending = [item for item in ReviewStore(store).outbox_items() if item.status == "pending"]
    finally:
        store.close()
    write_report(snapshot, report_file, source=str(db), file_root=images.resolve())
    if not label_studio:
        with queue_file.open("w") as f:
            for item in sorted(pending, key=lambda i: -i.priority):
                doc = {
                    "product_id": item.product_id,
                    "image_url": item.image_url,
                    "model_version": item.model_version,
                    "reason": item.reason,
                    "priority": item.priority,
                    **{k: v for k, v in payload_to_json(item.payload).items() if k in ("low_values", "model_values")},
                }
                f.write(json.dumps(doc) + "\n")
    return snapshot, len(pending)


def _print_products(snapshot: CatalogSnapshot, photos: dict[str, tuple[Path, str]], show: int, model: Path) -> None:
    from learner.model.manifest import read_manifest

    manifest = read_manifest(model)
    groups = list(manifest["taxonomy"]["groups"])
    detector_groups = [g for g, spec in manifest["taxonomy"]["groups"].items() if spec.get("source") == "detector"]
    products: list[ReportedProduct] = sorted(snapshot.products, key=lambda p: p.product.product_id)
    order = {pid: i for i, pid in enumerate(photos)}
    products.sort(key=lambda p: order.get(p.product.product_id, len(order)))
    typer.echo(
        f"\n{len(products)} products enriched; the first {min(show, len(products))} (value confidence, "
        f"{SUGGESTION_MARK} = suggestion: below its group's auto-fill threshold, not auto-filled):"
    )
    for item in products[:show]:
        p = item.product
        label = photos.get(p.product_id, (None, ""))[1]
        photo = photos[p.product_id][0].name if p.product_id in photos else "-"
        head = f"  {p.title} ({p.product_id}, {photo})" if p.title else f"  {p.product_id} ({photo})"
        head += f"  [CC0 set's label: {label}]" if label else ""
        odd = any(a.withheld_by == UNFAMILIAR_PHOTO for a in p.attributes.values() if a.source != "human")
        head += "  UNFAMILIAR PHOTO: nothing auto-filled" if odd else ""
        disputed = [g for g, a in p.attributes.items() if a.source != "human" and a.withheld_by == TITLE_PHOTO_CONFLICT]
        head += f"  TITLE/PHOTO CONFLICT: {', '.join(disputed)}" if disputed else ""
        typer.echo(head + ("  -> review" if item.routed_for_review else ""))
        cells = []
        for group in groups:
            attr = p.attributes.get(group)
            if attr is None:
                continue
            value = ", ".join(attr.value) if isinstance(attr.value, list) else attr.value
            mark = "" if attr.auto_filled or attr.source == "human" else SUGGESTION_MARK
            cells.append(f"{group}={value} {attr.confidence:.2f}{mark}")
        line = "    "
        for cell in cells:
            if len(line) + len(cell) > 110 and line.strip():
                typer.echo(line.rstrip())
                line = "    "
            line += cell + "   "
        typer.echo(line.rstrip())
    if detector_groups and not manifest.get("detector"):
        typer.echo(f"  ({', '.join(detector_groups)}: this bundle has no object detector, so no detected objects)")


def _print_summary(
    snapshot: CatalogSnapshot,
    routed: int,
    label_studio: bool,
    events: Path,
    db: Path,
    model: Path,
    report_file: Path,
    queue_file: Path,
    photos: dict[str, tuple[Path, str]],
    started: float,
) -> None:
    from daemon.report import count_values
    from learner.model.manifest import read_manifest

    counts = count_values(snapshot)
    dead = sorted((events / "dead-letter").glob("*.json"))
    version = read_manifest(model)["model_version"]
    values = counts.auto_filled + counts.suggested
    queue = (
        f"{routed} products in the review outbox of the database (Label Studio is configured: "
        "`shelfsight review run` sends them)"
        if label_studio
        else f"{routed} products -> {shown_path(queue_file)} (Label Studio is not configured; one JSON line each)"
    )
    first = next(iter(photos.values()))[0]
    rows = [
        ("products enriched", f"{counts.products} of {len(photos)} published (CC0 user photos, not catalog photos)"),
        ("values", f"{values}: {counts.auto_filled} auto-filled, {counts.suggested} suggestions"),
        ("routed for review", queue),
        ("dead letters", f"{len(dead)}" + (f" (in {shown_path(events / 'dead-letter')})" if dead else "")),
        ("database", shown_path(db)),
        ("model", f"{shown_path(model)} ({version})"),
        ("report", f"{shown_path(report_file)}  <- open it in a browser"),
        ("took", f"{time.monotonic() - started:.0f} s"),
    ]
    typer.echo("\nsummary")
    for name, text in rows:
        typer.echo(f"  {name:<18} {text}")
    typer.echo(f"\nnext: .venv/bin/shelfsight tag {shown_path(first)} --draw tagged.png")
