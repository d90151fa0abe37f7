"""Across-seed summary of tests/benchmarks/bench_active_learning.py: per arm and budget, the mean and spread of the
champion's and the challenger's holdout figures over routing seeds; the uncertainty-minus-random gap at each
budget with a t-interval over seeds; the tables and the PNGs.

The gap is paired by seed: with the same routing seed both arms see the same stream of products (only the routing
differs), so `uncertainty(seed) - random(seed)` removes what the stream itself contributes. Its interval is
Student's t over the seeds' gaps (mean +- t(0.975, k-1) * sd / sqrt(k), k seeds): with 3 seeds a bootstrap over
seeds would have only 10 distinct resamples, and the t-interval at least widens honestly with few seeds.

Rounds are matched by index: round r of every run is the budget `r x budget` (the labels a run actually trained
on can differ by a top-up task; their mean is reported as `labels`).

Must not: run services or models; it reads the per-seed figures `bench_active_learning` collected.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FIGURES = ("mean_top1", "mean_macro_f1", "challenger_mean_top1", "challenger_mean_macro_f1")
FIGURE_LABELS = {
    "mean_top1": "champion mean top-1",
    "mean_macro_f1": "champion mean macro-F1",
    "challenger_mean_top1": "challenger mean top-1",
    "challenger_mean_macro_f1": "challenger mean macro-F1",
}
# two-sided 95% quantiles of Student's t, t(0.975, df), df = 1..30 (statistical tables; no scipy in the project)
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
Run = Mapping[str, Any]  # one (arm, seed) run: {"arm", "seed", "rounds": [RoundFigures as a dict, ...]}


def t975(df: int) -> float:
    """t(0.975, df); the normal 1.960 beyond 30 degrees of freedom (within 2% of t there)."""
    if df < 1:
        raise ValueError("a t-interval needs at least two seeds")
    return T975[df - 1] if df <= len(T975) else 1.960


def t_interval(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the 95% t-interval of the mean; None with fewer than two values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _value(runs: Sequence[Run], arm: str, seed: int, rnd: int, figure: str) -> float | None:
    for run in runs:
        if run["arm"] == arm and run["seed"] == seed:
            for r in run["rounds"]:
                if r["round"] == rnd:
                    value = r.get(figure)
                    return None if value is None else float(value)
    return None


def _rounds(runs: Sequence[Run]) -> list[int]:
    return sorted({int(r["round"]) for run in runs for r in run["rounds"]})


def spread(runs: Sequence[Run], budget: int) -> dict[str, list[dict[str, Any]]]:
    """Per arm, per round: labels (nominal and mean used), and for each figure the per-seed values, mean, sd, min,
    max over the seeds that reached the round (round 0, the seed model, has no challenger)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for arm in sorted({run["arm"] for run in runs}):
        seeds = sorted(run["seed"] for run in runs if run["arm"] == arm)
        rows = []
        for rnd in _rounds(runs):
            used = [float(r["labels"]) for run in runs if run["arm"] == arm for r in run["rounds"] if r["round"] == rnd]
            row: dict[str, Any] = {"round": rnd, "budget": rnd * budget, "labels": _mean(used)}
            for figure in FIGURES:
                values = {s: _value(runs, arm, s, rnd, figure) for s in seeds}
                present = [v for v in values.values() if v is not None]
                row[figure] = {
                    "per_seed": values,
                    "mean": _mean(present),
                    "sd": statistics.stdev(present) if len(present) > 1 else None,
                    "min": min(present, default=None),
                    "max": max(present, default=None),
                }
            rows.append(row)
        out[arm] = rows
    return out


def gaps(runs: Sequence[Run], budget: int, a: str = "uncertainty", b: str = "random") -> list[dict[str, Any]]:
    """Per round and figure: `a - b` for each seed both arms ran, its mean and 95% t-interval over seeds."""
    seeds = sorted({run["seed"] for run in runs if run["arm"] == a} & {run["seed"] for run in runs if run["arm"] == b})
    out = []
    for rnd in _rounds(runs):
        row: dict[str, Any] = {"round": rnd, "budget": rnd * budget}
        for figure in FIGURES:
            per_seed: dict[int, float] = {}
            for s in seeds:
                x, y = _value(runs, a, s, rnd, figure), _value(runs, b, s, rnd, figure)
                if x is not None and y is not None:
                    per_seed[s] = x - y
            interval = t_interval(list(per_seed.values()))
            row[figure] = {
                "per_seed": per_seed,
                "mean": _mean(list(per_seed.values())),
                "low": interval[1] if interval else None,
                "high": interval[2] if interval else None,
                "seeds": len(per_seed),
            }
        out.append(row)
    return out


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "   -  "
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def spread_table(summary: Mapping[str, list[dict[str, Any]]]) -> str:
    lines = ["mean (min..max) over seeds, per arm and budget"]
    for arm, rows in summary.items():
        lines.append(f"{arm} routing")
        lines.append(f"{'budget':>6} {'labels':>7}  " + "  ".join(f"{FIGURE_LABELS[f]:>28}" for f in FIGURES))
        for row in rows:
            cells = []
            for f in FIGURES:
                c = row[f]
                cells.append(f"{_fmt(c['mean'])} ({_fmt(c['min'])}..{_fmt(c['max'])})".rjust(28))
            lines.append(f"{row['budget']:>6} {_fmt(row['labels']):>7}  " + "  ".join(cells))
    return "\n".join(lines)


def gap_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["uncertainty - random, paired by seed: mean [95% t-interval over seeds] (seeds)"]
    lines.append(f"{'budget':>6}  " + "  ".join(f"{FIGURE_LABELS[f]:>32}" for f in FIGURES))
    for row in rows:
        cells = []
        for f in FIGURES:
            c = row[f]
            cells.append(f"{_fmt(c['mean'], True)} [{_fmt(c['low'], True)}, {_fmt(c['high'], True)}] ({c['seeds']})")
        lines.append(f"{row['budget']:>6}  " + "  ".join(cell.rjust(32) for cell in cells))
    return "\n".join(lines)


def plot_curves(summary: Mapping[str, list[dict[str, Any]]], path: Path, subtitle: str) -> None:
    """2 x 2: champion / challenger x mean top-1 / mean macro-F1 against the budget; per arm the mean over seeds
    (line), the range over seeds (band) and each seed (thin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    colours = {"uncertainty": "tab:red", "random": "tab:blue"}
    for ax, figure in zip(axes.flat, FIGURES, strict=True):
        for arm, rows in summary.items():
            colour = colours.get(arm, "tab:gray")
            rows = [r for r in rows if r[figure]["mean"] is not None]
            xs = [r["budget"] for r in rows]
            ax.plot(xs, [r[figure]["mean"] for r in rows], "o-", color=colour, label=f"{arm}: mean over seeds")
            ax.fill_between(
                xs, [r[figure]["min"] for r in rows], [r[figure]["max"] for r in rows], color=colour, alpha=0.15
            )
            seeds = sorted({s for r in rows for s in r[figure]["per_seed"]})
            for s in seeds:
                pts = [(r["budget"], r[figure]["per_seed"].get(s)) for r in rows]
                pts = [(x, y) for x, y in pts if y is not None]
                ax.plot([x for x, _ in pts], [y for _, y in pts], "-", color=colour, alpha=0.35, linewidth=0.8)
        ax.set_title(FIGURE_LABELS[figure], fontsize=10)
        ax.set_ylabel("holdout (single-choice groups)")
        ax.grid(alpha=0.3)
        ax.legend(title="band: min..max over seeds; thin: each seed", fontsize=8, title_fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("labelling budget (annotated products)")
    fig.suptitle(f"Active learning through the review loop, uncertainty vs random routing\n{subtitle}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gaps(rows: Sequence[Mapping[str, Any]], path: Path, subtitle: str) -> None:
    """The uncertainty-minus-random gap per budget with its 95% t-interval over seeds, top-1 and macro-F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    pairs = (("mean_top1", "challenger_mean_top1"), ("mean_macro_f1", "challenger_mean_macro_f1"))
    for ax, figures in zip(axes, pairs, strict=True):
        step = max((r["budget"] for r in rows), default=1) / max(len(rows), 1)
        for offset, figure, colour in ((-0.08, figures[0], "tab:green"), (0.08, figures[1], "tab:purple")):
            pts = [r for r in rows if r[figure]["mean"] is not None and r["round"] > 0]
            xs = [r["budget"] + offset * step for r in pts]
            means = [r[figure]["mean"] for r in pts]
            ax.plot(xs, means, "o", color=colour, label=FIGURE_LABELS[figure])
            for x, r in zip(xs, pts, strict=True):
                if r[figure]["low"] is not None:
                    ax.plot([x, x], [r[figure]["low"], r[figure]["high"]], "-", color=colour)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel("labelling budget (annotated products)")
        ax.set_ylabel("uncertainty - random (95% t-interval over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Gap at equal budget, paired by routing seed\n{subtitle}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_simulation(table: Sequence[dict[str, Any]], arms: Sequence[str], path: Path) -> None:
    """al_simulation's PNG: mean top-1 per arm, and each arm's gap to random with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["labels"] for row in table]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for n, arm in enumerate(arms):
        colour = f"C{n}"  # one colour per arm in both panels
        left.plot(labels, [row["arms"][arm]["mean_top1"] for row in table], marker="o", label=arm, color=colour)
        if arm == "random":
            continue
        gaps = [row["arms"][arm] for row in table]
        right.plot(labels, [g["gap"] for g in gaps], marker="o", label=arm, color=colour)
        if all(g["gap_low"] is not None for g in gaps):
            low, high = [g["gap_low"] for g in gaps], [g["gap_high"] for g in gaps]
            right.fill_between(labels, low, high, alpha=0.12, color=colour)
    right.axhline(0.0, color="grey", linewidth=0.8)
    left.set(xlabel="labels beyond the seed set", ylabel="holdout mean top-1 (mean over seeds)", title="curves")
    right.set(xlabel="labels beyond the seed set", ylabel="arm - random (95% t-interval)", title="gap to random")
    left.legend()
    right.legend()
    fig.suptitle("active learning on frozen ImageNet features (proxy of the review loop)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Re-derive the tables and PNGs from a figures.json (`python -m tests.benchmarks.al_report FIGURES_JSON`)."""
    import json
    import sys

    path = Path(sys.argv[1])
    figures = json.loads(path.read_text())
    budget = int(figures["configuration"]["budget"])
    summary, gap_rows = spread(figures["runs"], budget), gaps(figures["runs"], budget)
    print(spread_table(summary) + "\n\n" + gap_table(gap_rows))
    c = figures["configuration"]
    subtitle = (
        f"seed model {c['seed_products']} products; {c['rounds']} rounds x {budget} labels, {c['chunk']} products "
        f"streamed per round, {c['epochs']} epochs; holdout {c['holdout_products']} products; routing seeds "
        f"{','.join(map(str, c['routing_seeds']))} (re-drawn from {path.name})"
    )
    plot_curves(summary, path.parent / "bench-active-learning.png", subtitle)
    plot_gaps(gap_rows, path.parent / "bench-active-learning-gap.png", subtitle)


if __name__ == "__main__":
    main()
