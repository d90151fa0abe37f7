"""`shelfsight train` and `shelfsight evaluate`: fine-tune a classifier into a model bundle, and measure a
bundle on any labelled set.

This file only turns command-line options into `TrainConfig` / learner.evaluation calls
and prints results; the recipe's defaults live in `TrainConfig` (one place). Every expected failure
(missing data, invalid taxonomy, unreadable bundle, unknown backbone, weights not installed) prints one
clear message on stderr and exits with status 1, without a traceback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from daemon.cli_support import fail
from learner.training.recipe import SCHEDULES, TrainConfig, parse_sizes

if TYPE_CHECKING:
    from learner.datasets.labelled import LabelledSet

_DEFAULTS = TrainConfig()


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("evaluate-detector")(evaluate_detector_command)


def train_command(
    ctx: typer.Context,
    data: list[Path] = typer.Option(
        ...,
        "--data",
        help="labels.csv, or a directory holding labels.csv and images/. Repeatable: every set at serving resolution "
        "is split by the same product-id rule and its splits join the first's (train, validation, test).",
    ),
    taxonomy: str = typer.Option(..., "--taxonomy", help="Taxonomy YAML file, or a built-in name (fashion-products)."),
    out: Path = typer.Option(..., "--out", help="Where to write the model bundle (.safetensors)."),
    low_res_data: list[Path] = typer.Option(
        [],
        "--low-res-data",
        help="A set of low-resolution photos (e.g. 60x80 thumbnails; repeatable): its train split only is trained on, "
        "at --low-res-size, in batches of its own, never in the last --serving-only-epochs.",
    ),
    low_res_size: int = typer.Option(_DEFAULTS.low_res_size, help="Letterbox side of the --low-res-data photos."),
    low_res_fraction: float = typer.Option(
        _DEFAULTS.low_res_fraction, help="Share of the --low-res-data photos drawn afresh for each epoch using them."
    ),
    low_res_title_weight: float = typer.Option(
        _DEFAULTS.low_res_title_weight,
        help="Weight of each --low-res-data title in the title model's loss (the other sets' titles weigh 1).",
    ),
    serving_only_epochs: int = typer.Option(
        _DEFAULTS.serving_only_epochs, help="The last N epochs train on serving-resolution photos only, once each."
    ),
    serving_only_keep_steps: bool = typer.Option(
        _DEFAULTS.serving_only_keep_steps,
        "--serving-only-keep-steps/--serving-only-one-pass",
        help="Serving-only epochs as long as the mixed ones (a second draw of serving photos), not one pass.",
    ),
    backbone: str = typer.Option(_DEFAULTS.backbone, help="tf_efficientnet_lite0/1/2 or a torchvision classifier."),
    teacher: Path | None = typer.Option(
        None,
        "--teacher",
        help="A trained bundle of the same taxonomy (e.g. an EfficientNet-Lite2 one) distilled into the --backbone "
        "being trained: its answers are soft targets beside the labels (docs/model-card.md, distillation).",
    ),
    distil_weight: float = typer.Option(
        _DEFAULTS.distil_weight, help="With --teacher: the distillation loss's share of the loss, in (0, 1]."
    ),
    distil_temperature: float = typer.Option(
        _DEFAULTS.distil_temperature, help="With --teacher: the softmax temperature of the distillation loss."
    ),
    epochs: int = typer.Option(_DEFAULTS.epochs, help="Maximum epochs (cosine schedule spans them all)."),
    freeze_stages: int = typer.Option(_DEFAULTS.freeze_stages, help="Backbone stages frozen, from the input."),
    batch_size: int = typer.Option(_DEFAULTS.batch_size),
    lr: float = typer.Option(_DEFAULTS.lr, help="Peak learning rate of the heads."),
    backbone_lr_decay: float = typer.Option(_DEFAULTS.backbone_lr_decay, help="LR factor per earlier stage."),
    weight_decay: float = typer.Option(_DEFAULTS.weight_decay),
    warmup_epochs: float = typer.Option(_DEFAULTS.warmup_epochs),
    schedule: str = typer.Option(
        _DEFAULTS.schedule, help="After warm-up: cosine (one decay to the end) or restarts (cosine cycles, SGDR)."
    ),
    restart_epochs: float = typer.Option(_DEFAULTS.restart_epochs, help="restarts: first cycle length in epochs."),
    restart_mult: float = typer.Option(
        _DEFAULTS.restart_mult, help="restarts: each cycle this many times longer than the last (>= 1)."
    ),
    label_smoothing: float = typer.Option(_DEFAULTS.label_smoothing),
    class_weight_power: float = typer.Option(
        _DEFAULTS.class_weight_power, help="Class weight = frequency ** -power (0 = unweighted)."
    ),
    pos_weight_cap: float = typer.Option(
        _DEFAULTS.pos_weight_cap,
        help="Multi-label groups: each value's positives weigh min(CAP, negatives/positives) on the train split "
        "(0 = off).",
    ),
    ema_decay: float = typer.Option(_DEFAULTS.ema_decay, help="Weight moving average decay (0 = off)."),
    brightness: float = typer.Option(_DEFAULTS.brightness, help="Brightness jitter (0 = off)."),
    contrast: float = typer.Option(_DEFAULTS.contrast, help="Contrast jitter (0 = off)."),
    colour_bins: int = typer.Option(_DEFAULTS.colour_bins, help="Colour-histogram input for colour groups (0 = off)."),
    tap_stage: list[int] = typer.Option(
        [], help="Backbone stage whose pooled output the heads also see (repeatable; e.g. 3 and 5 for lite0)."
    ),
    tap_pooling: str = typer.Option(
        _DEFAULTS.tap_pooling, help="How tapped stages are pooled: mean, or foreground (ignores white background)."
    ),
    group_loss_weight: list[str] = typer.Option(
        [], help="GROUP=WEIGHT multiplies that group's loss (repeatable; default 1 for every group)."
    ),
    patience: int = typer.Option(_DEFAULTS.patience, help="Early stopping patience in epochs (0 = off)."),
    input_size: int | None = typer.Option(None, help="Input side in pixels (default: the backbone's)."),
    sizes: str | None = typer.Option(
        None,
        help="Progressive resizing: training input sides, smallest first, ending with the input size (e.g. 160,224); "
        "the epochs are split evenly across them; validation is always at the input size.",
    ),
    dropout: float = typer.Option(_DEFAULTS.dropout),
    seed: int = typer.Option(_DEFAULTS.seed),
    group_by: str | None = typer.Option(None, help="Column that groups photos of one product for the split."),
    image_column: str | None = typer.Option(None, help="Column naming the image file (default: image, else id)."),
    split_salt: str = typer.Option(_DEFAULTS.split.salt, help="Salt of the product-id split hash."),
    val_fraction: float = typer.Option(_DEFAULTS.split.val),
    train_fraction: float = typer.Option(_DEFAULTS.split.train),
    report_dir: Path | None = typer.Option(None, help="Also write val/ and test/ evaluation reports here."),
    device: str = typer.Option(_DEFAULTS.device, help="auto, cpu, cuda or cuda:N."),
    threads: int | None = typer.Option(None, help="CPU threads (default: all cores)."),
    workers: int | None = typer.Option(None, help="Data loader processes (default: 0 on CPU, 4 on CUDA)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    test: bool = typer.Option(
        True, help="Evaluate the test split at the end; --no-test while choosing a recipe, so test stays unseen."
    ),
    title: bool = typer.Option(
        True,
        help="Also train the title model (and the fusion of photos and title) when the set has titles (the "
        "taxonomy's title_column); --no-title: photos only.",
    ),
    find_lr: bool = typer.Option(
        False,
        "--find-lr",
        help="Only run a learning-rate range test (~100 steps, 1e-6 to 1, on a copy of the model): writes a PNG of "
        "loss against lr (in --report-dir, else beside --out) and prints the suggested --lr; writes no bundle.",
    ),
    lr_steps: int = typer.Option(100, help="--find-lr: steps of the sweep (it stops earlier when the loss diverges)."),
) -> None:
    """Fine-tune an attribute classifier and write a model bundle (selection on the validation split)."""
    from learner.datasets.labelled import DataError, SplitRule, load_labelled_set
    from learner.evaluation.report import build_report, write_report
    from learner.model.backbones import PretrainedWeightsUnavailable
    from learner.model.bundle import BundleError, load_bundle
    from learner.model.taxonomy import TaxonomyError, load_taxonomy
    from learner.training.runtime import retain_freed_memory
    from learner.training.train import train

    started = time.time()
    try:
        tax = load_taxonomy(taxonomy)
        labelled, *more = [load_labelled_set(d, tax, image_column=image_column, group_column=group_by) for d in data]
        low_res = [load_labelled_set(d, tax, image_column=image_column, group_column=group_by) for d in low_res_data]
        group_weights = _parse_weights(group_loss_weight)
        if schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
        config = TrainConfig.from_options(  # the options named like TrainConfig's fields, and these
            ctx.params,
            sizes=parse_sizes(sizes) if sizes is not None else (),
            tap_stages=tuple(tap_stage),
            group_loss_weights=group_weights,
            split=SplitRule(salt=split_salt, train=train_fraction, val=val_fraction),
        )
        if low_res:
            config.low_res_epochs()  # a recipe that cannot use them fails before anything is decoded
        counts: dict[str, int] = {}  # the serving-resolution sets together, per split
        for d in (labelled, *more):
            n = d.summary(config.split)["split_counts"]
            counts = {k: counts.get(k, 0) + n.get(k, 0) for k in {*counts, *n}}
            typer.echo(f"data: {len(d.samples)} images ({_counts(n)}) from {d.source}", err=True)
        for d in low_res:
            n = d.summary(config.split)["split_counts"].get("train", 0)
            typer.echo(f"low-resolution data: {n} of {len(d.samples)} images (train split) from {d.source}", err=True)
        if find_lr:
            png = report_dir / "lr_finder.png" if report_dir else out.with_suffix(".lr.png")
            _find_lr(config, labelled, png, lr_steps)
            return
        # this process only trains: freed memory is kept for the next step instead of faulted in again (about 1.5x
        # the CPU training speed; tests/benchmarks/bench_train_step.py)
        retain_freed_memory()
        teacher_bundle = load_bundle(teacher) if teacher is not None else None
        if teacher_bundle is not None:
            typer.echo(f"teacher: {teacher_bundle.model_version} ({teacher_bundle.classifier.backbone_name})", err=True)
        result = train(config, labelled, out, evaluate_test=test, more=more, low_res=low_res, teacher=teacher_bundle)
    except TaxonomyError as exc:
        raise fail(str(exc)) from None
    except (BundleError, DataError, PretrainedWeightsUnavailable, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None

    bundle = result.bundle
    typer.echo(f"bundle: {result.bundle_path} ({bundle.model_version})")
    typer.echo(f"best epoch {bundle.lineage['best_epoch']} of {bundle.lineage['epochs_run']}")
    if bundle.title_model is not None:
        tops = bundle.title_model.metrics["validation"]["top1"]
        line = " ".join(f"{g}={v:.3f}" for g, v in tops.items() if v is not None)
        typer.echo(f"title model, validation top-1: {line}")
    elif "title" in bundle.lineage:
        typer.echo(bundle.lineage["title"])
    for split_name, metrics in (("validation", result.validation), ("test", result.test)):
        if metrics is not None:
            typer.echo(f"{split_name}: {_one_line(metrics)}")
    if report_dir is not None:
        for split_name, metrics in (("val", result.validation), ("test", result.test)):
            if metrics is None:
                continue
            report = build_report(
                metrics,
                model_version=bundle.model_version,
                split=split_name,
                data={**labelled.summary(), "evaluated": counts.get(split_name, 0)},
                split_rule=bundle.lineage["split"],
                bundle_path=str(result.bundle_path),
            )
            paths = write_report(report, report_dir / split_name)
            typer.echo(f"{split_name} report: {', '.join(str(p) for p in paths.values())}")
    typer.echo(f"wall time {time.time() - started:.0f} s")


def evaluate_command(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="Model bundle (.safetensors)."),
    data: Path = typer.Option(..., "--data", help="labels.csv, or a directory holding labels.csv and images/."),
    split: str | None = typer.Option(
        None,
        help="test, val, train or all (the bundle's own split rule). Default: test on the bundle's training set, "
        "all on any other set.",
    ),
    out: Path = typer.Option(..., "--out", help="Directory for report.json, report.md and the PNG charts."),
    group_by: str | None = typer.Option(None, help="Split grouping column (default: the bundle's)."),
    image_column: str | None = typer.Option(None, help="Column naming the image file (default: image, else id)."),
    batch_size: int = typer.Option(64),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    tta: str = typer.Option("none", "--tta", help="none, or flip: average of the image and its mirror image."),
    beta: float = typer.Option(
        1.0, "--beta", help="Multi-label groups: the F-beta reported (recall weighs beta times precision)."
    ),
) -> None:
    """Evaluate a bundle on a labelled set: per-group accuracy, macro-F1, per-class P/R/F1, calibration,
    auto-fill coverage and precision; multi-label F-beta at the bundle's per-value thresholds and at 0.5; labels
    the taxonomy does not know are listed and counted as errors."""
    from learner.datasets.labelled import SPLITS, DataError
    from learner.evaluation.labelled_evaluation import evaluate_on_labelled_set
    from learner.evaluation.report import build_report, label_audit_lines, write_report
    from learner.model.bundle import BundleError

    if split is not None and split not in (*SPLITS, "all"):
        raise fail(f"--split must be one of {', '.join((*SPLITS, 'all'))}, not {split!r}")
    if tta not in ("none", "flip"):
        raise fail(f"--tta must be none or flip, not {tta!r}")
    if not beta > 0:
        raise fail(f"--beta must be > 0, not {beta}")
    try:
        done = evaluate_on_labelled_set(
            bundle_path,
            data,
            split,
            group_column=group_by,
            image_column=image_column,
            batch_size=batch_size,
            device=device,
            tta=None if tta == "none" else tta,
            beta=beta,
        )
    except (BundleError, DataError, ValueError) as exc:
        raise fail(str(exc)) from None
    for note in done.notes:
        typer.echo(f"note: {note}")
    metrics, n, split, audit = done.metrics, done.images, done.split, done.audit
    report = build_report(
        metrics,
        model_version=done.model_version,
        split=split,
        data={**done.labelled.summary(), "evaluated": n, "tta": tta},
        split_rule=done.rule.to_dict() if split != "all" else None,
        bundle_path=str(bundle_path),
        label_audit=audit,
        notes=done.notes,
    )
    paths = write_report(report, out)
    typer.echo(f"{split} ({n} images): {_one_line(metrics)}")
    if audit:
        typer.echo("labels the taxonomy does not know (errors in the all-rows accuracy):")
        for line in label_audit_lines(audit):
            typer.echo(f"  {line}")
    for name, m in metrics["groups"].items():
        if m.get("top1") is not None:
            a = m.get("autofill") or {}
            cover, prec = a.get("coverage"), a.get("precision")
            typer.echo(
                f"  {name}: top-1 {m['top1']:.3f} known values, {m['all_rows_top1']:.3f} all rows; auto-filled "
                f"{_pct(cover)} at precision {_pct(prec)}"
                + ("" if a.get("threshold") is not None else " (no auto-fill threshold: all)")
            )
        elif m["kind"] == "multi" and m.get("micro_fbeta") is not None:
            fixed = m["at_default_threshold"]
            typer.echo(
                f"  {name}: F{beta:g} micro {m['micro_fbeta']:.3f} macro {_fmt(m['macro_fbeta'])} at per-value "
                f"thresholds; micro {fixed['micro_fbeta']:.3f} macro {_fmt(fixed['macro_fbeta'])} at 0.5"
            )
    if metrics["summary"].get("hierarchy_disagreement"):
        h = metrics["summary"]["hierarchy_disagreement"]
        typer.echo(f"raw heads disagreed with the hierarchy on {h['rows']} of {n} images ({_pct(h['rate'])})")
    if metrics["summary"].get("shift_guard"):
        g = metrics["summary"]["shift_guard"]
        typer.echo(
            f"shift guard: {g['unfamiliar_images']} of {g['images']} photos unfamiliar; withheld "
            f"{g['withheld_values']} values the thresholds would have auto-filled ({_pct(g['withheld_share'])}); "
            "the figures above are after it"
        )
    if done.sources is not None:
        _echo_sources(done.sources, out)
    typer.echo(f"report: {', '.join(str(p) for p in paths.values())}")


def _echo_sources(sources: dict[str, Any], out: Path) -> None:
    """The photos / title / fused comparison as a table, and written beside the report as sources.json."""
    from learner.evaluation.source_comparison import comparison_lines

    typer.echo(
        f"photos, title and both ({sources['titled']} of {sources['products']} products with a title; masked: "
        "the attribute words taken out of the titles); top-1, then auto-filled share (precision):"
    )
    for line in comparison_lines(sources):
        typer.echo(f"  {line}")
    from learner.evaluation.report import plot_sources

    (out / "sources.json").write_text(json.dumps(sources, indent=2))
    typer.echo(f"sources: {out / 'sources.json'}, {plot_sources(sources, out / 'sources.png')}")


def evaluate_detector_command(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="Model bundle (.safetensors) with a detector."),
    coco: Path = typer.Option(..., "--coco", help="COCO instances JSON of the outlined objects (boxes, masks)."),
    images: Path | None = typer.Option(None, "--images", help="Folder of its file_names (default: images/ beside)."),
    rename: list[str] = typer.Option(
        [], help="CATEGORY=CLASS renames a file category to a detector class (repeatable), e.g. 'bag, wallet=handbag'."
    ),
    out: Path | None = typer.Option(None, "--out", help="Also write the figures here as JSON."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Score a bundle's detector on a COCO instances file: box mAP@[.5:.95], mAP@.5, mAP@.75 and the IoU-sweep
    score, and for a mask detector mask mAP and the mask IoU sweep, on the classes both the file and the detector
    have (detections and objects of other classes are left out and counted)."""
    from learner.evaluation.detector_eval import evaluate_detector_on_coco
    from learner.model.bundle import BundleError
    from learner.model.masks import MaskError

    try:
        figures = evaluate_detector_on_coco(bundle_path, coco, images, _parse_renames(rename), device)
    except (BundleError, MaskError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"{figures['images']} images, {figures['objects']} objects of {len(figures['classes'])} classes: box mAP "
        f"{figures['map']:.3f} (@.5 {figures['map_50']:.3f}, @.75 {figures['map_75']:.3f}), IoU sweep "
        f"{figures['iou_sweep']:.3f}"
    )
    if "mask_map" in figures:
        typer.echo(
            f"masks ({figures['mask_images']} images with every object outlined): mask mAP {figures['mask_map']:.3f}, "
            f"mask IoU sweep {figures['mask_iou_sweep']:.3f}"
        )
    left = {k: v for k, v in {**figures.get("left_out", {}), **figures["skipped"]}.items() if v}
    if left:
        typer.echo("left out: " + ", ".join(f"{k} {v}" for k, v in left.items()))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2) + "\n")
        typer.echo(f"figures: {out}")


def _parse_renames(items: list[str]) -> dict[str, str]:
    renames: dict[str, str] = {}
    for item in items:
        source, sep, target = item.rpartition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"--rename takes CATEGORY=CLASS (e.g. 'bag, wallet=handbag'), not {item!r}")
        renames[source.strip()] = target.strip()
    return renames


def _find_lr(config: TrainConfig, labelled: LabelledSet, png: Path, steps: int) -> None:
    from learner.training.lr_finder import find_lr

    sweep, path = find_lr(config, labelled, png, steps=steps)
    lrs = sweep.lrs
    typer.echo(f"lr range test: {len(lrs)} steps from {lrs[0]:.1e} to {lrs[-1]:.1e} ({sweep.stopped}); chart {path}")
    if sweep.suggestion is None:
        typer.echo("no suggestion: the loss never fell (check the data, or widen the sweep); no bundle written")
    else:
        typer.echo(f"suggested --lr {sweep.suggestion:.2e} (steepest fall of the smoothed loss); no bundle written")


def _parse_weights(items: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--group-loss-weight takes GROUP=WEIGHT (e.g. articleType=2), not {item!r}")
    return weights


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {counts.get(k, 0)}" for k in ("train", "val", "test"))


def _one_line(metrics: dict[str, Any]) -> str:
    parts = []
    for name, m in metrics["groups"].items():
        if m.get("top1") is not None:
            parts.append(f"{name} {m['top1']:.3f}/{m['macro_f1']:.3f}")
    s = metrics["summary"]
    return "top-1/macro-F1 " + " ".join(parts) + f" | mean top-1 {json.dumps(round(s['mean_top1'] or 0, 4))}"
