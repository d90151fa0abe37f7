"""Label Studio tasks for a second look at likely wrong labels (`shelfsight data issues --label-studio`).

One task per image with at least one flagged label: the labelling view of the review loop (`label_config`), the
set's current labels as the pre-annotation (so the annotator confirms or changes them), and a note naming each
flagged group with its given and suggested value. The task's `LABEL_ISSUE_KEY` (set name and sample id) makes sending
idempotent.

Pure: JSON out. The command (daemon/commands_data.py) talks to Label Studio.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from learner.datasets.labelled import Sample
from learner.evaluation.label_issues import LabelIssue
from learner.model.taxonomy import Taxonomy
from learner.review.tasks import CONFLICT_NAME, DESCRIPTION_NAME, IMAGE_NAME, answer_result

LABEL_ISSUE_KEY = "shelfsight_label_issue"  # task data field: "<set>:<sample id>"
LABELS_VERSION = "labels.csv"  # the pre-annotation's model_version: these are the set's labels, not a model's


def issue_note(issues: Sequence[LabelIssue]) -> str:
    """What the annotator reads, e.g. "Possibly wrong label: baseColour is Blue, the images suggest Navy Blue
    (0.83)." (one clause per flagged group)."""
    clauses = [
        f"{i.group} is {i.given}, the images suggest {i.suggested} ({i.suggested_probability:.2f})" for i in issues
    ]
    noun = "label" if len(clauses) == 1 else "labels"
    return f"Possibly wrong {noun}: {'; '.join(clauses)}."


def given_values(taxonomy: Taxonomy, sample: Sample) -> dict[str, str | list[str]]:
    """The sample's labels as values, per classifier group that has one."""
    out: dict[str, str | list[str]] = {}
    for group in taxonomy.classifier_groups:
        label = sample.labels.get(group.name)
        if label is None:
            continue
        out[group.name] = [group.values[i] for i in label] if isinstance(label, tuple) else group.values[label]
    return out


def label_issue_tasks(
    taxonomy: Taxonomy,
    samples: Sequence[Sample],
    issues: Sequence[LabelIssue],
    image_url: Callable[[Sample], str],
    set_name: str,
) -> list[dict[str, Any]]:
    """One task per sample with issues, in the order its first issue is listed (most likely wrong first)."""
    by_id: Mapping[str, Sample] = {s.sample_id: s for s in samples}
    grouped: dict[str, list[LabelIssue]] = {}
    for issue in issues:
        if issue.sample_id not in by_id:
            raise ValueError(f"issue names sample {issue.sample_id!r}, which the set {set_name!r} does not have")
        grouped.setdefault(issue.sample_id, []).append(issue)
    tasks = []
    for sample_id, found in grouped.items():
        sample = by_id[sample_id]
        data = {
            IMAGE_NAME: image_url(sample),
            "product_id": sample_id,
            "title": sample.title or "",
            DESCRIPTION_NAME: issue_note(found),
            CONFLICT_NAME: "",
            "reason": "label_issue",
            LABEL_ISSUE_KEY: f"{set_name}:{sample_id}",
        }
        result = answer_result(taxonomy, given_values(taxonomy, sample))
        score = min(i.label_quality for i in found)
        tasks.append(
            {"data": data, "predictions": [{"model_version": LABELS_VERSION, "score": score, "result": result}]}
        )
    return tasks
