"""Evaluation reports: one JSON document, a Markdown-style text summary and PNG charts per evaluated split.

`build_report` wraps the metrics of `learner.evaluation.evaluate.compute_metrics` with what they were measured on
(model version, data, split rule); `write_report` writes `report.json`, `report.md`, `per_class_f1.png`
(per-class F1 bars for every single-choice group, classes of the evaluated split only, support beside each
bar), `confusion.png` (row-normalised confusion matrices of the groups with few classes),
`confused_pairs.png` (the most confused (true, predicted) pairs, counts, of the groups with more classes) and
`precision_coverage.png` (precision of auto-filled values against the share auto-filled, per group, with the
bundle's auto-fill threshold marked).

Rendering only: nothing here computes a metric. Matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFUSION_MAX_CLASSES = 12  # groups with at most this many classes present get a confusion matrix
CONFUSED_PAIRS_SHOWN = 15  # groups with more get their most confused pairs instead


def build_report(
    metrics: Mapping[str, Any],
    *,
    model_version: str,
    split: str,
    data: Mapping[str, Any],
    split_rule: Mapping[str, Any] | None = None,
    bundle_path: str | None = None,
    label_audit: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """`label_audit`: per group, evaluated rows whose label is empty, NA or unknown to the taxonomy
    (learner.evaluation.evaluate.audit_labels); `notes`: what the reader must know (e.g. why this split)."""
    return {
        "model_version": model_version,
        "bundle": bundle_path,
        "split": split,
        "split_rule": dict(split_rule) if split_rule else None,
        "data": dict(data),
        "notes": list(notes or []),
        "label_audit": dict(label_audit or {}),
        "metrics_definition": {
            "top1": "top-1 accuracy over samples whose label is known",
            "top3": "share of those samples whose true value is among the model's three highest-scored values",
            "macro_f1": "mean per-class F1 over the classes present (support > 0) in the evaluated split",
            "ece": "expected calibration error of the top-1 confidence, 15 equal-width bins",
            "all_rows_top1": "correct values over all evaluated rows; empty, NA and unknown labels count as errors",
            "autofill": "values whose confidence reaches the bundle's auto-fill threshold (all when it has none): "
            "coverage = their share of the labelled rows, precision = share of them that is right",
            "micro_fbeta": "multi-label: F-beta of all (image, value) decisions pooled, at the bundle's per-value "
            "thresholds; recall weighs beta times precision; at_default_threshold: the same at 0.5 for every value",
            "macro_fbeta": "multi-label: mean per-value F-beta over the values present in the evaluated split",
        },
        "summary": dict(metrics["summary"]),
        "groups": dict(metrics["groups"]),
    }


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, per_class_f1.png and (when a group qualifies) confusion.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "text": out / "report.md", "f1_png": out / "per_class_f1.png"}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    paths["text"].write_text(render_text(report))
    plot_per_class_f1(report, paths["f1_png"])
    confusion = out / "confusion.png"
    if plot_confusions(report, confusion):
        paths["confusion_png"] = confusion
    pairs = out / "confused_pairs.png"
    if plot_confused_pairs(report, pairs):
        paths["confused_pairs_png"] = pairs
    curve = out / "precision_coverage.png"
    if plot_precision_coverage(report, curve):
        paths["precision_coverage_png"] = curve
    return paths


def render_text(report: Mapping[str, Any]) -> str:
    lines = [
        f"# Evaluation of {report['model_version']} on the {report['split']} split",
        "",
        f"Data: {report['data'].get('source', '?')} ({report['data'].get('evaluated', '?')} images evaluated)",
    ]
    if report.get("split_rule"):
        lines.append(f"Split rule: {report['split_rule'].get('rule', report['split_rule'])}")
    lines += [f"Note: {n}" for n in report.get("notes", [])]
    s = report["summary"]
    lines += [
        f"Mean top-1 over groups: {_fmt(s.get('mean_top1'))}; mean macro-F1: {_fmt(s.get('mean_macro_f1'))}",
    ]
    if s.get("hierarchy_disagreement"):
        h = s["hierarchy_disagreement"]
        lines.append(
            f"Raw heads disagreed with the hierarchy ({' > '.join(h['levels'])}) on {h['rows']} rows "
            f"({_fmt(h['rate'])}); values are decoded consistently."
        )
    if s.get("shift_guard"):
        g = s["shift_guard"]
        lines.append(
            f"The shift guard found {g['unfamiliar_images']} of {g['images']} photos unfamiliar "
            f"({_fmt(g['unfamiliar_share'])}) and withheld {g['withheld_values']} values their thresholds would have "
            f"auto-filled ({_fmt(g['withheld_share'])} of them); the auto-fill figures below are after it."
        )
    lines += [
        "",
        "| group | n | skipped | top-1 | top-3 | macro-F1 | ECE | classes present | all rows top-1 | "
        "auto-fill threshold | auto-filled | precision of auto-filled | precision of its lowest band |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["groups"].items():
        if m["kind"] == "single":
            a = m.get("autofill") or {}
            threshold = a.get("threshold")
            shown = "none (all)" if threshold is None else "never" if threshold > 1 else _fmt(threshold)
            lines.append(
                f"| {name} | {m['n']} | {m['skipped']} | {_fmt(m['top1'])} | {_fmt(m.get('top3'))} | "
                f"{_fmt(m['macro_f1'])} | {_fmt(m['ece'])} | {m.get('classes_present', '-')} | "
                f"{_fmt(m.get('all_rows_top1'))} | {shown} | {_fmt(a.get('coverage'))} | {_fmt(a.get('precision'))} | "
                f"{_fmt(a.get('band_precision'))} |"
            )
        else:
            lines.append(
                f"| {name} (multi-label, micro-F1 {_fmt(m['micro_f1'])}) | {m['n']} | {m['skipped']} | - | - | "
                f"{_fmt(m['macro_f1'])} | - | - | - | - | - | - | - |"
            )
    lines += multi_label_lines(report["groups"])
    if report.get("label_audit"):
        lines += ["", "Labels the taxonomy does not know (counted as errors in 'all rows top-1'):", ""]
        lines += [f"- {line}" for line in label_audit_lines(report["label_audit"])]
    for name, m in report["groups"].items():
        if not m.get("per_class"):
            continue
        lines += [
            "",
            f"## {name}",
            "",
            "| value | support | predicted | precision | recall | F1 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for value, c in sorted(m["per_class"].items(), key=lambda kv: -kv[1]["support"]):
            lines.append(
                f"| {value} | {c['support']} | {c['predicted']} | {_fmt(c['precision'])} | {_fmt(c['recall'])} | "
                f"{_fmt(c['f1'])} |"
            )
    return "\n".join(lines) + "\n"


def multi_label_lines(groups: Mapping[str, Any]) -> list[str]:
    """The multi-label table: micro/macro F1 and F-beta at the bundle's per-value thresholds and at a fixed 0.5."""
    multi = {name: m for name, m in groups.items() if m["kind"] == "multi" and "at_default_threshold" in m}
    if not multi:
        return []
    lines = [
        "",
        "| multi-label group | n | thresholds | micro-F1 | macro-F1 | beta | micro-F-beta | macro-F-beta "
        "| exact match |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in multi.items():
        fixed = m["at_default_threshold"]
        for label, f in (("per value", m), (f"fixed {fixed['threshold']:g}", fixed)):
            lines.append(
                f"| {name} | {m['n']} | {label} | {_fmt(f['micro_f1'])} | {_fmt(f['macro_f1'])} | {m['beta']:g} | "
                f"{_fmt(f['micro_fbeta'])} | {_fmt(f['macro_fbeta'])} | {_fmt(f['exact_match'])} |"
            )
    return lines


def label_audit_lines(audit: Mapping[str, Any]) -> list[str]:
    """One line per group: how many evaluated labels were empty, NA, and which unknown values (with counts)."""
    lines = []
    for group, a in audit.items():
        unknown = a.get("unknown") or {}
        parts = [f"{a.get('empty', 0)} empty", f"{a.get('na', 0)} NA", f"{sum(unknown.values())} unknown"]
        names = ", ".join(f"{v!r} ({n})" for v, n in unknown.items())
        lines.append(f"{group}: {', '.join(parts)}" + (f": {names}" if names else ""))
    return lines


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class_f1(report: Mapping[str, Any], path: Path) -> Path:
    """One horizontal bar chart per single-choice group: F1 of each class present, most frequent first."""
    plt = _pyplot()
    panels = []
    for name, m in report["groups"].items():
        present = [(v, c) for v, c in m.get("per_class", {}).items() if c["support"] > 0]
        if present:
            panels.append((name, m, sorted(present, key=lambda vc: -vc[1]["support"])))
    if not panels:
        panels = [("(no labelled samples)", {}, [])]
    heights = [max(2, len(p[2])) * 0.22 + 0.9 for p in panels]
    total = sum(heights) + 0.6  # inches; the top 0.6 hold the figure title
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, total), gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (name, m, classes) in zip(axes[:, 0], panels, strict=True):
        labels = [v for v, _ in classes]
        f1 = [c["f1"] for _, c in classes]
        ys = range(len(classes))
        ax.barh(list(ys), f1, color="#4C72B0", height=0.7)
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.12)
        for y, (_, c) in zip(ys, classes, strict=True):
            ax.text(min(c["f1"], 1.0) + 0.01, y, f"{c['f1']:.2f} (n={c['support']})", va="center", fontsize=7)
        title = name
        if m:
            title += f"  top-1 {_fmt(m.get('top1'))}  macro-F1 {_fmt(m.get('macro_f1'))}  n={m.get('n')}"
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("F1")
    fig.suptitle(f"{report['model_version']} - {report['split']} split - per-class F1", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / total))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusions(report: Mapping[str, Any], path: Path) -> bool:
    """Row-normalised confusion matrices (classes present only) of groups with few classes. False: none."""
    chosen = []
    for name, m in report["groups"].items():
        if m.get("kind") != "single" or not m.get("confusion"):
            continue
        values = list(m["per_class"].keys())  # classes present or predicted, in taxonomy order
        if 2 <= len(values) <= CONFUSION_MAX_CLASSES:
            chosen.append((name, m, values))
    if not chosen:
        return False
    plt = _pyplot()
    import numpy as np

    cols = min(2, len(chosen))
    rows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 5 * rows), squeeze=False)
    for ax in axes.flat[len(chosen) :]:
        ax.axis("off")
    for ax, (name, m, values) in zip(axes.flat, chosen, strict=False):
        all_values = list(report_values(m))
        idx = [all_values.index(v) for v in values]
        cm = np.asarray(m["confusion"])[np.ix_(idx, idx)].astype(float)
        rows_sum = cm.sum(axis=1, keepdims=True)
        norm = np.divide(cm, rows_sum, out=np.zeros_like(cm), where=rows_sum > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(values)), values, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(values)), values, fontsize=8)
        for i in range(len(values)):
            for j in range(len(values)):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} (top-1 {_fmt(m.get('top1'))})", fontsize=10)
    fig.suptitle(f"{report['model_version']} - {report['split']} split - confusion (counts, colour = row share)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def report_values(group_metrics: Mapping[str, Any]) -> list[str]:
    """The class names indexing a group's confusion matrix (stored with the metrics)."""
    return list(group_metrics["values"])


def plot_confused_pairs(report: Mapping[str, Any], path: Path) -> bool:
    """For single-choice groups with more than CONFUSION_MAX_CLASSES classes, a bar chart of the most frequent
    (true -> predicted) mistakes, counts. False: no such group."""
    import numpy as np

    panels = []
    for name, m in report["groups"].items():
        if m.get("kind") != "single" or not m.get("confusion") or len(m["per_class"]) <= CONFUSION_MAX_CLASSES:
            continue
        values = report_values(m)
        cm = np.asarray(m["confusion"])
        off = cm.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:CONFUSED_PAIRS_SHOWN]
        rows, cols = np.unravel_index(order, off.shape)
        pairs = [(f"{values[i]} -> {values[j]}", int(off[i, j])) for i, j in zip(rows, cols, strict=True)]
        pairs = [p for p in pairs if p[1] > 0]
        if pairs:
            panels.append((name, m, pairs))
    if not panels:
        return False
    plt = _pyplot()
    heights = [len(p[2]) * 0.25 + 0.9 for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights) + 0.6), squeeze=False)
    for ax, (name, m, pairs) in zip(axes[:, 0], panels, strict=True):
        ys = list(range(len(pairs)))
        ax.barh(ys, [n for _, n in pairs], color="#C44E52", height=0.7)
        ax.set_yticks(ys, [label for label, _ in pairs], fontsize=8)
        ax.invert_yaxis()
        for y, (_, n) in zip(ys, pairs, strict=True):
            ax.text(n, y, f" {n}", va="center", fontsize=7)
        ax.set_title(f"{name}: most confused (true -> predicted), n={m.get('n')}", fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("rows")
    fig.suptitle(f"{report['model_version']} - {report['split']} split - most confused pairs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_precision_coverage(report: Mapping[str, Any], path: Path) -> bool:
    """Precision of auto-filled values against coverage, one line per single-choice group, with the point of
    the bundle's auto-fill threshold marked. False: no group has labelled values."""
    curves = [(n, m) for n, m in report["groups"].items() if (m.get("precision_coverage") or {}).get("coverage")]
    if not curves:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    for name, m in curves:
        c = m["precision_coverage"]
        (line,) = ax.plot(c["coverage"], c["precision"], label=name, linewidth=1.5)
        a = m.get("autofill") or {}
        if a.get("threshold") is not None and a.get("coverage"):
            ax.plot([a["coverage"]], [a["precision"]], "o", color=line.get_color())
    recorded_targets = {(m.get("autofill") or {}).get("target_precision") for _, m in curves}
    for t in sorted(float(t) for t in recorded_targets if t is not None):
        ax.axhline(t, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1.01)
    ax.set_xlabel("coverage (share of labelled values auto-filled)")
    ax.set_ylabel("precision of auto-filled values")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"{report['model_version']} - {report['split']} split - dots: the bundle's auto-fill thresholds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_sources(sources: Mapping[str, Any], path: Path) -> Path:
    """Top-1 per group from the photos, the title and both (and, hatched, with the attribute words masked out of the
    titles), as `compare_sources` measured them: what a product's title adds, at a glance."""
    plt = _pyplot()
    figures = sources["sources"]
    groups = [g for g, f in figures["photos"].items() if f.get("n")]
    bars = [s for s in ("photos", "title", "fused", "title_masked", "fused_masked") if s in figures]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups)), 4.0))
    colour = {"photos": "C0", "title": "C1", "fused": "C2", "title_masked": "C1", "fused_masked": "C2"}
    for k, s in enumerate(bars):
        x = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(groups))]
        masked = s.endswith("masked")
        top1 = [figures[s][g]["top1"] for g in groups]
        label = s.replace("_", ", ")
        ax.bar(x, top1, width, label=label, color=colour[s], hatch="//" if masked else None, alpha=0.5 if masked else 1)
    ax.set_xticks(range(len(groups)), groups, rotation=20)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("top-1")
    ax.set_title(f"photos, title and both ({sources['products']} products; masked: attribute words taken out)")
    ax.legend(fontsize=8, ncol=len(bars), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
