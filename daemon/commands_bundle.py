"""`shelfsight models calibrate | add-title | export | shrink`: work on one bundle file, outside any registry:
fitting its calibration (temperatures, auto-fill thresholds, the shift guard, the fusion of photos and title) on a
labelled split, adding a title model to it, exporting it for the onnxruntime backend, and storing its weights as
float16 for shipping.

Registered under `shelfsight models` by daemon/cli.py after daemon/commands_models.py made that sub-app. Expected
failures print one `error: ...` line and exit with status 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from daemon.cli_support import fail, sub_app
from learner.training.recipe import TrainConfig


def register(app: typer.Typer) -> None:
    """Add `calibrate`, `add-title`, `export` and `shrink` to the `models` sub-app (daemon/commands_models.py's)."""
    models = sub_app(app, "models", "daemon/commands_models.py")
    models.command("calibrate")(calibrate_command)
    models.command("add-title")(add_title_command)
    models.command("export")(export_command)
    models.command("shrink")(shrink_command)


def calibrate_command(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="Model bundle (.safetensors) to calibrate."),
    data: Path = typer.Option(..., "--data", help="labels.csv, or a directory holding labels.csv and images/."),
    split: str = typer.Option("val", help="Split fitted on (the bundle's own split rule): val, test, train or all."),
    target_precision: float = typer.Option(
        0.97, help="Precision auto-filled values must reach, for groups without target_precision in the taxonomy."
    ),
    confidence_level: float = typer.Option(
        0.5,
        help="0.5: the validation precision itself must reach the target; higher: its lower bound at this "
        "confidence must (0.95 fills fewer values, and they are right more often than the target).",
    ),
    min_accepted: int = typer.Option(50, help="A threshold must auto-fill at least this many validation values."),
    beta: float = typer.Option(
        1.0,
        "--beta",
        help="Multi-label groups: per-value thresholds maximise F-beta on the split (recall weighs beta times "
        "precision; 1: F1).",
    ),
    hierarchy: str | None = typer.Option(
        None,
        help="Derive a hierarchy from the data's labels and store it in the bundle's taxonomy: group names top-down, "
        "comma-separated (e.g. masterCategory,subCategory,articleType).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the calibrated bundle here (default: rewrite BUNDLE)."),
    group_by: str | None = typer.Option(None, help="Split grouping column (default: the bundle's)."),
    image_column: str | None = typer.Option(None, help="Column naming the image file (default: image, else id)."),
    batch_size: int = typer.Option(64),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Fit per-group temperatures and auto-fill thresholds on a labelled split and store them in the bundle.

    Values whose calibrated confidence reaches their group's threshold are auto-filled by the daemon; the others
    are kept as suggestions. A group where no threshold reaches the target precision is never auto-filled.
    Multi-label groups get per-value thresholds maximising F-beta on the split (the daemon emits a value when its
    probability reaches its threshold).
    """
    from learner.datasets.labelled import SPLITS, DataError
    from learner.evaluation.recalibrate import recalibrate
    from learner.model.bundle import BundleError
    from learner.model.manifest import file_sha256
    from learner.model.taxonomy import TaxonomyError

    if split not in (*SPLITS, "all"):
        raise fail(f"--split must be one of {', '.join((*SPLITS, 'all'))}, not {split!r}")
    if not 0.0 < target_precision <= 1.0 or not 0.5 <= confidence_level < 1.0 or min_accepted < 1:
        raise fail("--target-precision must be in (0, 1], --confidence-level in [0.5, 1) and --min-accepted >= 1")
    if not beta > 0:
        raise fail(f"--beta must be > 0, not {beta}")
    try:
        done = recalibrate(
            bundle_path,
            data,
            split,
            out,
            target_precision=target_precision,
            confidence_level=confidence_level,
            min_accepted=min_accepted,
            beta=beta,
            hierarchy_levels=[g.strip() for g in hierarchy.split(",")] if hierarchy else None,
            group_column=group_by,
            image_column=image_column,
            batch_size=batch_size,
            device=device,
        )
    except (BundleError, DataError, TaxonomyError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None

    derived, calibration, target = done.hierarchy, done.calibration, done.target
    if derived is not None:
        typer.echo(
            f"hierarchy {' > '.join(derived.hierarchy.levels)}: {len(derived.hierarchy.implies)} leaf values from "
            f"{derived.rows} rows; rows disagreeing with their leaf's usual path: {sum(derived.conflicts.values())}"
            f"; leaf values never seen (free): {len(derived.unseen_leaves)}"
        )
    if done.split_note is not None:
        typer.echo(done.split_note)
    typer.echo(f"calibrated on {done.images} images ({split} split of {done.source}):")
    for name, c in calibration.thresholds.items():
        e = calibration.ece[name]
        ece = "-" if e["before"] is None else f"{e['before']:.3f} -> {e['after']:.3f}"
        where = calibration.target_source[name]
        if c.reached:
            fill = (
                f"auto-fill at >= {c.threshold:.3f}: {100 * c.coverage:.1f}% of {c.n} values, precision "
                f"{c.precision:.3f} (lower bound {c.precision_lower_bound:.3f})"
            )
        else:
            fill = f"NOT auto-filled: no threshold reaches the target on {c.n} labelled values"
        typer.echo(
            f"  {name}: T {calibration.temperatures[name]:.3f}, ECE {ece}, target {c.target_precision:g} ({where}); "
            f"{fill}"
        )
    for name, r in calibration.multi_report.items():
        fixed = r[f"micro_fbeta_at_{0.5:g}"]
        typer.echo(
            f"  {name} (multi-label): per-value thresholds maximising F{beta:g}: micro F{beta:g} "
            f"{r['micro_fbeta']:.3f} (at 0.5: {fixed:.3f}) on {r['n']} images; values without a positive keep "
            "their threshold: "
            f"{', '.join(r['without_positives']) or 'none'}"
        )
    if done.title_calibration is not None:
        for name, c in done.title_calibration.thresholds.items():
            fill = f">= {c.threshold:.3f}: {100 * c.coverage:.1f}% of {c.n}" if c.reached else "never"
            t = done.title_calibration.temperatures[name]
            typer.echo(f"  {name} (title only): T {t:.3f}; auto-fill {fill}")
    if done.fusion is not None:
        for name, f in done.fusion.groups.items():
            r = done.fusion.report["groups"].get(name, {})
            top1 = (
                " / ".join(f"{r['accuracy'][k]:.3f}" for k in ("photos", "title", "fused")) if "accuracy" in r else "-"
            )
            fill = r.get("autofill", {})
            filled = f">= {f.threshold:.3f}: {100 * fill.get('coverage', 0.0):.1f}%" if f.threshold <= 1 else "never"
            flagged = r.get("conflict", {}).get("clean_flagged_share")
            conflicts = "none checked" if flagged is None else f"{100 * flagged:.1f}% of clean products flagged"
            typer.echo(
                f"  {name} (photos + title): weights {f.image_weight:.2f} / {f.title_weight:.2f}; top-1 photos / title "
                f"/ fused {top1}; auto-fill {filled}; conflicts: {conflicts}"
            )
    if calibration.hierarchy_disagreement is not None:
        typer.echo(f"raw heads disagreed with the hierarchy on {100 * calibration.hierarchy_disagreement:.1f}% of rows")
    typer.echo(
        f"bundle {'rewritten' if target == bundle_path else 'written'}: {target}; file SHA-256 "
        f"{done.sha256_before[:12]}... -> {file_sha256(target)[:12]}... (weights and tensor_sha256 unchanged; a "
        "registry record of this version still names the old file SHA-256)"
    )


def add_title_command(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="Model bundle (.safetensors), float16 or float32."),
    data: list[Path] = typer.Option(
        ...,
        "--data",
        help="labels.csv (with a title column), or a directory holding it; repeatable: the further sets' train and "
        "validation splits join the first's (as `shelfsight train` joins them).",
    ),
    low_res_data: list[Path] = typer.Option(
        [], "--low-res-data", help="A set whose train split's titles are also trained on, lighter (repeatable)."
    ),
    low_res_title_weight: float = typer.Option(
        TrainConfig.low_res_title_weight, help="Weight of each --low-res-data title in the loss (the others weigh 1)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the bundle here (default: rewrite BUNDLE)."),
    title_column: str | None = typer.Option(None, help="Column of product titles (default: the taxonomy's)."),
    group_by: str | None = typer.Option(None, help="Split grouping column (default: the bundle's)."),
    image_column: str | None = typer.Option(None, help="Column naming the image file (default: image, else id)."),
    seed: int = typer.Option(0),
    epochs: int = typer.Option(20, help="Passes over the training titles."),
    dim: int = typer.Option(64, help="Size of the title embedding."),
    fusion: bool = typer.Option(True, help="Also fit photos and title together on the validation split (needed)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (the photos predicted for the fusion)."),
) -> None:
    """Train a title model on the bundle's train split of DATA (its own split rule; every --data joined, the
    --low-res-data train splits weighing less), calibrate it on the validation split, fit the fusion of photos and
    title there, and store both in the bundle; the image model is untouched (a float16 bundle stays float16).
    --no-fusion: the bundle reads no titles until `models calibrate` fits one."""
    from learner.datasets.labelled import DataError
    from learner.model.bundle import BundleError
    from learner.training.errors import TrainingError
    from learner.training.title_bundle import add_title_model

    try:
        done = add_title_model(
            bundle_path,
            data[0],
            out,
            more=data[1:],
            low_res=low_res_data,
            low_res_weight=low_res_title_weight,
            title_column=title_column,
            group_column=group_by,
            image_column=image_column,
            seed=seed,
            epochs=epochs,
            dim=dim,
            progress=lambda line: typer.echo(line, err=True),
            fusion=fusion,
            device=device,
        )
    except (BundleError, DataError, TrainingError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    if done.split_note is not None:
        typer.echo(done.split_note)
    model, figures = done.model, done.model.metrics
    typer.echo(
        f"title model ({len(model.vocab)} features x {model.dim}, column {done.title_column!r}) trained on "
        f"{done.train_titles} titles, calibrated on {done.val_titles} (validation split):"
    )
    for name, top1 in figures["validation"]["top1"].items():
        masked = figures["validation_masked"]["top1"][name]
        threshold = model.autofill_thresholds.get(name)
        fill = "never" if threshold is None or threshold > 1 else f">= {threshold:.3f}"
        typer.echo(f"  {name}: top-1 {top1:.3f} (attribute words masked {masked:.3f}); title-only auto-fill {fill}")
    typer.echo(
        f"bundle written: {done.target} (weights stored as {done.weights_dtype}, image model untouched)"
        + ("; fusion of photos and title fitted: it reads titles" if done.fusion is not None else "")
        + ("; its fusion was dropped: run `shelfsight models calibrate`" if done.dropped_fusion else "")
    )


def export_command(
    bundle: Path = typer.Argument(..., help="A model bundle (.safetensors)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Where to write it (default: beside the bundle, named by its SHA-256, where the "
        "onnxruntime backend looks for it).",
    ),
    images: Path | None = typer.Option(
        None, "--images", help="Directory of photos (*.jpg) for the parity check, e.g. the fashion-products images."
    ),
    photos: list[Path] = typer.Option([], "--photo", help="A photo for the parity check (repeatable)."),
    n: int = typer.Option(1000, "--n", help="Photos taken from --images."),
    max_abs_diff: float = typer.Option(1e-3, help="Largest tolerated |probability difference| per group."),
    min_top1_agreement: float = typer.Option(0.999, help="Smallest tolerated top-1 agreement per group."),
) -> None:
    """Export a bundle's classifier for the onnxruntime backend, refused when it disagrees with torch.

    The parity check runs torch and onnxruntime on the photos given (else on synthetic images) and refuses the
    export, with the figures, when any group's probabilities differ by more than --max-abs-diff or its top-1
    agreement is below --min-top1-agreement.
    """
    from learner.inference.onnx_export import ParityError, export_onnx
    from learner.inference.onnx_model import onnx_path_for
    from learner.model.manifest import BundleError, file_sha256

    if fmt != "onnx":
        raise fail(f"--format {fmt!r} is not supported (onnx)")
    files = [*photos, *(sorted(images.glob("*.jpg"))[:n] if images is not None else [])]
    try:
        target = out or onnx_path_for(bundle, file_sha256(bundle))
        result = export_onnx(
            bundle,
            target,
            [f.read_bytes() for f in files],
            max_abs_diff=max_abs_diff,
            min_top1_agreement=min_top1_agreement,
        )
    except ParityError as exc:
        typer.echo(json.dumps(exc.report.to_dict(), indent=2))
        raise fail(str(exc)) from None
    except (BundleError, OSError) as exc:
        raise fail(str(exc)) from None
    parity = result.parity
    worst = max(parity.groups.values(), key=lambda g: g.max_abs_diff)
    typer.echo(
        f"exported {result.model_version} to {result.path} in {result.seconds:.0f}s; parity on {parity.images} "
        f"{'photos' if parity.source == 'photos' else 'synthetic images'}: max |dp| {worst.max_abs_diff:.1e}, "
        f"top-1 agreement >= {min(g.top1_agreement for g in parity.groups.values()):.2%}"
    )


def shrink_command(
    bundle: Path = typer.Argument(..., help="A model bundle (.safetensors) with float32 weights."),
    out: Path = typer.Option(..., "--out", help="Where to write the shrunk bundle."),
    dtype: str = typer.Option("float16", "--dtype", help="Storage type of the weights: float16 or bfloat16."),
) -> None:
    """Write a copy of a bundle with its weights stored as float16 (half the file), e.g. the starter model shipped in
    deploy/demo/. Loading casts them back to float32; the model version gets a -fp16 suffix."""
    from learner.model.bundle import shrink_bundle
    from learner.model.manifest import BundleError

    try:
        result = shrink_bundle(bundle, out, dtype)
    except (BundleError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"wrote {result.path}: {result.model_version}, {result.tensors_cast} tensors as {result.dtype}, "
        f"{result.bytes_before / 1e6:.1f} MB -> {result.bytes_after / 1e6:.1f} MB"
    )
