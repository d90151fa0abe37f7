"""The contact sheet of likely wrong labels: one cell per issue (the photo, its id, the group, the given value and
the suggested one with its out-of-fold probability), most likely wrong first, as a PNG people can scan in a minute
(`shelfsight data issues`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from learner.evaluation.label_issues import LabelIssue

COLUMNS = 8


def write_contact_sheet(path: Path, issues: Sequence[LabelIssue], title: str, columns: int = COLUMNS) -> Path:
    """Write the sheet; an unreadable photo gets an empty cell that says so. No issues: a sheet that says none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image, UnidentifiedImageError

    cols = max(1, min(columns, len(issues)))
    rows = max(1, math.ceil(len(issues) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not issues:
        axes[0][0].text(0.5, 0.5, "no likely wrong labels", ha="center", va="center")
    for ax, issue in zip(axes.flat, issues, strict=False):
        try:
            with Image.open(issue.image) as img:
                img.thumbnail((256, 256))
                ax.imshow(img.convert("RGB"))
        except (OSError, UnidentifiedImageError):
            ax.text(0.5, 0.5, "unreadable photo", ha="center", va="center", fontsize=7)
        ax.set_title(
            f"{_short(issue.sample_id)} [{issue.split}]\n{issue.group}\n"
            f"given: {issue.given} ({issue.given_probability:.2f})\n"
            f"suggested: {issue.suggested} ({issue.suggested_probability:.2f})",
            fontsize=7,
            loc="left",
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _short(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
