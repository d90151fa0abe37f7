"""How a finished event becomes one `ProductResult`: the tags of its images and its title decided into one value per
attribute group by the engine's product decision (`learner.inference.product_decision.ProductDecider`: photos and
title fused, conflicts withheld; without a title the photos' mean decided along the hierarchy, which for one photo
is exactly that photo's values), one digest for its images, and where it came from; the values of groups whose
auto-fill is suspended kept as suggestions (`withhold_suspended`).

Pure functions: what it must not do is I/O, routing to review (the writer asks the router), or know about threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Sequence

from connectors.records import SUSPENDED, AttributeValue, ProductResult
from daemon.pipeline.work import EventJob
from learner.inference.engine import ImageTags
from learner.inference.product_decision import ProductDecider, merge_attributes

__all__ = ["image_tags", "merge_attributes", "product_result", "withhold_suspended"]


def product_result(
    job: EventJob, decider: ProductDecider, source_name: str, attributes: list[AttributeValue] | None = None
) -> ProductResult:
    """The result of an event whose images are all tagged (`job.tags` holds one `ImageTags` per image read; none
    when every photo failed and the title decides alone), its values decided from its photos and its title
    (`decider`: the engine's, `TaggingEngine.decider`; `attributes`: those values when already decided, by
    `decider.decide_many` for many events at once)."""
    assert job.event is not None
    tags = image_tags(job)
    digests = [d for _, d in job.images]
    digest = digests[0] if len(digests) == 1 else hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()
    if not digests:  # every photo failed, decided from the title alone: the title stands for the photos in the key
        digest = hashlib.sha256(f"title:{job.event.title}".encode()).hexdigest()
    model_version = tags[0].model_version if tags else (job.engine.model_version if job.engine is not None else "")
    return ProductResult(
        product_id=job.event.product_id,
        title=job.event.title,
        description=job.event.description,
        category_hint=job.event.category_hint,
        event_id=job.event.event_id,
        image_url=job.images[0][0] if job.images else job.event.image_urls[0],
        image_digest=digest,
        model_version=model_version,
        attributes=decider.decide(tags, job.event.title) if attributes is None else attributes,
        source=f"{source_name}:{job.record.topic}/{job.record.partition}@{job.record.offset}",
    )


def image_tags(job: EventJob) -> list[ImageTags]:
    """The tags of the event's images, in event order."""
    return [job.tags[i] for i in range(job.expected)]


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
