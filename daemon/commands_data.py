"""`shelfsight data issues`: the labels of a labelled set that are likely wrong (cleanlab on out-of-fold
probabilities, learner/evaluation/label_issues.py), as CSV, a summary and a PNG contact sheet; with `--label-studio`
also as Label Studio tasks for a second look (their own project; the set's labels as pre-annotation).

Nothing is removed from the set: people decide. Features are cached in `--out` (`features-<source>.npz`, keyed by the
bundle's model version and the sample ids), so a second run with other groups or folds skips the image pass.
Expected failures print one line on stderr and exit 2, without a traceback.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from daemon.cli_support import CONFIG_OPTION, default_model, fail, load_settings, shown_path

if TYPE_CHECKING:
    import numpy as np

    from daemon.config import Settings
    from learner.datasets.labelled import LabelledSet
    from learner.evaluation.label_issues import LabelIssue
    from learner.model.bundle import ModelBundle

ISSUES_PROJECT = "ShelfSight label issues"


def register(app: typer.Typer) -> None:
    data = typer.Typer(help="Labelled sets: likely wrong labels.", no_args_is_help=True)
    data.command("issues")(issues_command)
    app.add_typer(data, name="data")


def issues_command(
    data_path: Path = typer.Argument(..., metavar="DATA", help="labels.csv, or a directory holding labels.csv."),
    model: Path | None = typer.Option(None, "--model", help="Bundle (default: the champion, else the starter)."),
    out: Path = typer.Option(Path("runs/label-issues"), "--out", help="Directory for the CSV, JSON and PNG."),
    groups: str | None = typer.Option(None, "--groups", help="Comma-separated groups (default: all single-choice)."),
    features: str = typer.Option(
        "bundle", "--features", help="bundle (what its heads read) or imagenet (the backbone's ImageNet weights)."
    ),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds of the out-of-fold probabilities."),
    sheet: int = typer.Option(48, "--sheet", min=0, help="Issues on the contact sheet (most likely wrong first)."),
    group_by: str | None = typer.Option(None, help="Column grouping photos of one product (default: one per row)."),
    label_studio: bool = typer.Option(
        False, "--label-studio", help=f"Also send the flagged images to Label Studio (project {ISSUES_PROJECT!r})."
    ),
    send_limit: int = typer.Option(200, "--send-limit", min=1, help="With --label-studio: at most this many images."),
    project_title: str = typer.Option(ISSUES_PROJECT, "--project", help="With --label-studio: the project's title."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """List the likely wrong labels of a labelled set, with the value its images suggest."""
    from learner.datasets.labelled import DataError, load_labelled_set
    from learner.evaluation.evaluate import split_rule_of
    from learner.evaluation.label_issue_sheet import write_contact_sheet
    from learner.evaluation.label_issues import FEATURE_SOURCES, find_label_issues, write_issues_csv
    from learner.model.bundle import BundleError, load_bundle

    if features not in FEATURE_SOURCES:
        raise fail(f"--features must be one of {', '.join(FEATURE_SOURCES)}, not {features!r}", 2)
    settings = load_settings(config)
    bundle_path = model or default_model(settings)[0]
    try:
        bundle = load_bundle(bundle_path)
        data = load_labelled_set(data_path, bundle.taxonomy, group_column=group_by)
    except (BundleError, DataError, FileNotFoundError) as exc:
        raise fail(str(exc), 2) from None
    chosen = [g.strip() for g in groups.split(",") if g.strip()] if groups else None
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    matrix = _features(bundle, data, features, out)
    try:
        results = find_label_issues(data, matrix, split_rule_of(bundle), chosen, folds=folds)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    csv_path = out / "label_issues.csv"
    rows = write_issues_csv(csv_path, results)
    ranked = sorted((i for r in results.values() for i in r.issues), key=lambda i: i.label_quality)
    sheet_path = out / "label_issues.png"
    if sheet:
        write_contact_sheet(
            sheet_path, ranked[:sheet], f"{data.source.parent.name}: likely wrong labels ({features} features)"
        )
    summary: dict[str, Any] = {
        "data": str(data.source),
        "model": str(bundle_path),
        "model_version": bundle.model_version,
        "features": features,
        "folds": folds,
        "groups": {name: r.summary() for name, r in results.items()},
        "seconds": round(time.monotonic() - started, 1),
    }
    typer.echo(f"{len(data.samples)} images of {shown_path(data.source)}, {features} features, {folds} folds")
    for name in results:
        s = summary["groups"][name]
        typer.echo(
            f"  {name}: {s['flagged']} of {s['labelled']} labels flagged ({100 * s['flagged_share']:.1f}%), "
            f"out-of-fold top-1 {s['oof_top1']:.3f}, by split {s['flagged_by_split']}"
        )
    typer.echo(
        f"{rows} issues: {shown_path(csv_path)}" + (f", contact sheet {shown_path(sheet_path)}" if sheet else "")
    )
    if label_studio:
        summary["label_studio"] = _send(settings, bundle, data, ranked, send_limit, project_title)
        typer.echo(
            f"Label Studio: {summary['label_studio']['sent']} tasks sent, "
            f"{summary['label_studio']['already_there']} already there (project {project_title!r})"
        )
    (out / "label_issues.json").write_text(json.dumps(summary, indent=2) + "\n")


def _features(bundle: ModelBundle, data: LabelledSet, source: str, out: Path) -> np.ndarray:
    """The features of every sample, from `out`'s cache when it was made by this bundle for these samples."""
    import numpy as np
    from tqdm import tqdm

    from learner.evaluation.label_issues import extract_features

    cache = out / f"features-{source}.npz"
    ids = np.array([s.sample_id for s in data.samples])
    if cache.is_file():
        stored = np.load(cache, allow_pickle=False)
        if str(stored["model_version"]) == bundle.model_version and np.array_equal(stored["ids"], ids):
            typer.echo(f"features: {shown_path(cache)} (cached)")
            return np.asarray(stored["features"])
    with tqdm(total=len(data.samples), desc="features", unit="img") as bar:
        matrix = extract_features(bundle, data.samples, source, progress=lambda done, _n: bar.update(done - bar.n))  # type: ignore[arg-type]
    np.savez(cache, features=matrix, ids=ids, model_version=np.array(bundle.model_version))
    return matrix


def _send(
    settings: Settings, bundle: ModelBundle, data: LabelledSet, ranked: list[LabelIssue], limit: int, title: str
) -> dict[str, int]:
    """Import a task per flagged image (most likely wrong first, at most `limit` images) that is not there yet."""
    from connectors.labelstudio import LabelStudioClient, LabelStudioError, LabelStudioUnavailable
    from daemon.review.sender import ImageNotShowable, TaskBuilder
    from learner.review.label_issue_tasks import LABEL_ISSUE_KEY, label_issue_tasks
    from learner.review.tasks import label_config

    r = settings.review
    if r.label_studio_token is None:
        raise fail("--label-studio needs review.label_studio_token (SHELFSIGHT_REVIEW__LABEL_STUDIO_TOKEN)", 2)
    if r.local_files_root is None:
        raise fail(
            "--label-studio needs review.local_files_root (Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT), "
            f"with the set's images under it: {data.source}",
            2,
        )
    chosen: list[str] = []
    for issue in ranked:
        if issue.sample_id not in chosen and len(chosen) < limit:
            chosen.append(issue.sample_id)
    kept = [i for i in ranked if i.sample_id in chosen]
    # the local files storage: the directory holding the photos (Label Studio refuses its document root itself)
    by_id = {s.sample_id: s for s in data.samples}
    storage = Path(os.path.commonpath([by_id[i].image_path.resolve().parent for i in chosen] or [data.source.parent]))
    builder = TaskBuilder(r.local_files_root, storage)
    client = LabelStudioClient(
        r.label_studio_url, r.label_studio_token.get_secret_value(), timeout_s=r.request_timeout_s
    )
    try:
        tasks = label_issue_tasks(
            bundle.taxonomy,
            data.samples,
            kept,
            lambda s: builder.image_url(s.image_path.resolve().as_uri()),
            data.source.parent.name,
        )
        project = client.ensure_project(title, label_config(bundle.taxonomy))
        client.ensure_local_storage(project, str(storage), title="shelfsight label issues")
        new = [t for t in tasks if client.find_task(project, LABEL_ISSUE_KEY, t["data"][LABEL_ISSUE_KEY]) is None]
        if new:
            client.import_tasks(project, new)
    except ImageNotShowable as exc:
        raise fail(str(exc), 2) from None
    except (LabelStudioUnavailable, LabelStudioError) as exc:
        raise fail(f"Label Studio at {r.label_studio_url}: {exc}", 2) from None
    return {"project": project, "sent": len(new), "already_there": len(tasks) - len(new)}
