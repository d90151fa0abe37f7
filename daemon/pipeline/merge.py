"""How a finished event becomes one `ProductResult`: the tags of its images merged into one value per attribute
group (`merge_attributes`), one digest for its images, and where it came from; the values of groups whose auto-fill
is suspended kept as suggestions (`withhold_suspended`).

Pure functions: what it must not do is I/O, routing to review (the writer asks the router), or know about threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Sequence

from connectors.records import SUSPENDED, Alternative, AttributeValue, ProductResult
from daemon.pipeline.work import EventJob
from learner.inference.engine import ImageTags
from learner.model.shift_guard import UNFAMILIAR_PHOTO
from learner.model.taxonomy import Taxonomy


def product_result(job: EventJob, taxonomy: Taxonomy, source_name: str) -> ProductResult:
    """The result of an event whose images are all tagged (`job.tags` holds one `ImageTags` per image)."""
    assert job.event is not None
    tags = image_tags(job)
    digests = [d for _, d in job.images]
    digest = digests[0] if len(digests) == 1 else hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()
    return ProductResult(
        product_id=job.event.product_id,
        title=job.event.title,
        description=job.event.description,
        category_hint=job.event.category_hint,
        event_id=job.event.event_id,
        image_url=job.images[0][0],
        image_digest=digest,
        model_version=tags[0].model_version,
        attributes=merge_attributes(tags, taxonomy),
        source=f"{source_name}:{job.record.topic}/{job.record.partition}@{job.record.offset}",
    )


def image_tags(job: EventJob) -> list[ImageTags]:
    """The tags of the event's images, in event order."""
    return [job.tags[i] for i in range(job.expected)]


def merge_attributes(tags: list[ImageTags], taxonomy: Taxonomy) -> list[AttributeValue]:
    """One value per attribute group for a product with one or more images.

    Single-choice groups take the image whose best value is most confident (with that image's
    alternatives); multi-label groups take the union of values (stored as a list), each at its
    highest confidence, with the box (and mask) of the strongest detection when the values come from the detector.
    A single-choice value below its group's auto-fill threshold, or from an unfamiliar photo (the shift guard), is
    stored as a suggestion (auto_filled False); so is a multi-label value when any photo that gave its group values
    was unfamiliar.
    """
    out: list[AttributeValue] = []
    for g in taxonomy.groups:
        if g.multi_label:
            best: dict[str, float] = {}
            for t in tags:
                for v, c in t.attributes.get(g.name, []):
                    best[v] = max(best.get(v, 0.0), c)
            if not best:
                continue
            values = sorted(best, key=lambda v: -best[v])
            unfamiliar = any(t.unfamiliar for t in tags if t.attributes.get(g.name))
            boxes = [d for t in tags for d in t.detections if d.attributes.get(g.name) in best]
            strongest_detection = max(boxes, key=lambda d: d.score) if boxes else None
            out.append(
                AttributeValue(
                    attribute=g.name,
                    value=values,
                    confidence=best[values[0]],
                    alternatives=[Alternative(v, round(best[v], 4)) for v in values],
                    box=list(strongest_detection.box) if strongest_detection is not None else None,
                    mask=strongest_detection.mask if strongest_detection is not None else None,
                    # a value seen on a photo the shift guard found unfamiliar is only a suggestion
                    auto_filled=not unfamiliar,
                    withheld_by=UNFAMILIAR_PHOTO if unfamiliar else None,
                )
            )
        else:
            candidates = [t for t in tags if t.attributes.get(g.name)]
            if not candidates:
                continue
            strongest = max(candidates, key=lambda t: t.attributes[g.name][0][1])
            chosen = strongest.attributes[g.name]
            out.append(
                AttributeValue(
                    attribute=g.name,
                    value=chosen[0][0],
                    confidence=chosen[0][1],
                    alternatives=[Alternative(v, round(c, 4)) for v, c in chosen],
                    auto_filled=strongest.is_auto_filled(g.name),
                    withheld_by=UNFAMILIAR_PHOTO if strongest.unfamiliar else None,
                )
            )
    return out


def withhold_suspended(attributes: Sequence[AttributeValue], suspended: Collection[str]) -> list[AttributeValue]:
    """The attributes with every auto-filled value of a `suspended` group (its auto-fill is suspended for the model
    version that made them) turned into a suggestion, `withheld_by` SUSPENDED; values already suggestions keep their
    reason (the audit counts a SUSPENDED value as one its threshold chose)."""
    return [
        dataclasses.replace(a, auto_filled=False, withheld_by=SUSPENDED)
        if a.auto_filled and a.attribute in suspended
        else a
        for a in attributes
    ]
