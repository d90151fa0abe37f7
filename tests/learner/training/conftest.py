"""Fixtures the training tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.learner.training.tiny_cc0 import copy_tiny_set


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 garment classes x 5 CC0 photos, copied with their labels.csv rows."""
    return copy_tiny_set(tmp_path_factory.mktemp("cc0-tiny"))
