"""A scripted annotator: answers the review loop's Label Studio tasks with known labels, through the SDK, as a
person working the queue would.

It sees only what Label Studio shows: the tasks of one project, their data (`product_id`, the review loop's
`priority`) and whether they are already annotated. It takes the unannotated tasks highest priority first (the
order the review loop ranks them: most uncertain first, or a random rank under `review.routing = random`), and
submits one annotation per task in Label Studio's result format (`answer_result` in learner.review), choosing the true
value of every classifier group the taxonomy can express. The review worker then brings the answers back into the
product database (webhook or polling), exactly as for a human.

What it must not do: read or write the product database, or touch the review outbox: it is the human side only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.labelstudio import LabelStudioClient
from learner.model.taxonomy import Taxonomy
from learner.review.tasks import answer_result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answered:
    """One submitted annotation: the task, the product and how many groups it answered."""

    task_id: int
    product_id: str
    groups: int
    priority: float


@dataclass
class ScriptedAnnotator:
    """`truth[product_id][group] = value` (groups named as in the taxonomy; values the taxonomy does not list are
    left unanswered, as an annotator could not pick them). `lead_time_s` is reported as the time spent per task."""

    client: LabelStudioClient
    taxonomy: Taxonomy
    truth: Mapping[str, Mapping[str, str]]
    lead_time_s: float = 5.0
    answered: list[Answered] = field(default_factory=list)

    def answer_for(self, product_id: str) -> list[dict[str, Any]]:
        labels = self.truth.get(product_id)
        if labels is None:
            raise KeyError(f"the annotator has no true labels for product {product_id!r}")
        groups = {g.name: g for g in self.taxonomy.classifier_groups}
        known = {g: v for g, v in labels.items() if g in groups and v in groups[g].values}
        return answer_result(self.taxonomy, known)

    def pending(self, project_id: int) -> list[dict[str, Any]]:
        """Unannotated tasks of the project, highest `priority` first (ties: oldest task first)."""
        query = {
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
                ],
            }
        }
        tasks = []
        for task in self.client.sdk.tasks.list(project=project_id, query=json.dumps(query), page_size=500):
            t = task if isinstance(task, dict) else task.model_dump()
            if int(t.get("total_annotations") or 0) == 0 and not t.get("is_labeled"):
                tasks.append(t)
        return sorted(tasks, key=lambda t: (-float(t["data"].get("priority") or 0.0), int(t["id"])))

    def annotate(self, project_id: int, n: int) -> list[Answered]:
        """Answer the first `n` tasks of the queue; returns what was submitted (fewer when the queue is shorter).

        Tasks this annotator already answered are skipped even when Label Studio still lists them as unannotated:
        its task counters can lag just after an annotation is created, and answering a task twice adds no label."""
        done: list[Answered] = []
        answered_ids = {a.task_id for a in self.answered}
        listed = self.pending(project_id)
        queue = [t for t in listed if int(t["id"]) not in answered_ids]
        if len(queue) < len(listed):
            log.info("%d task(s) already answered are still listed as unannotated: skipped", len(listed) - len(queue))
        for task in queue[:n]:
            product_id = str(task["data"]["product_id"])
            result = self.answer_for(product_id)
            self.client.sdk.annotations.create(id=int(task["id"]), result=result, lead_time=self.lead_time_s)
            done.append(Answered(int(task["id"]), product_id, len(result), float(task["data"].get("priority") or 0)))
        self.answered.extend(done)
        return done
