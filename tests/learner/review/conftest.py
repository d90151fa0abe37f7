"""Fixtures of the review loop's pure tests: the clothing taxonomy every test routes, renders and parses against."""

from __future__ import annotations

import pytest

from learner.model.taxonomy import Taxonomy, load_taxonomy
from tests.learner.review.outputs import ROOT


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")
