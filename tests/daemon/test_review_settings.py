"""Settings of the review loop and the learner's trigger that changed meaning: `learner.min_corrections` (values)
became `learner.min_corrected_products` (products), and the review worker's claim timing."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from daemon.config import LearnerSettings, ReviewSettings, SettingDeprecationWarning, Settings


def test_the_old_min_corrections_setting_still_works_with_a_warning_that_it_now_counts_products(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHELFSIGHT_LEARNER__MIN_CORRECTIONS", "12")
    with pytest.warns(SettingDeprecationWarning, match="counts PRODUCTS") as caught:
        settings = Settings()
    assert settings.learner.min_corrected_products == 12
    assert "min_corrected_products" in str(caught[0].message)


def test_setting_both_trigger_names_is_an_error_that_says_which_to_keep() -> None:
    with pytest.raises(ValidationError, match="set only min_corrected_products"):
        LearnerSettings(min_corrections=200, min_corrected_products=50)  # type: ignore[call-arg]


def test_the_trigger_counts_fifty_products_by_default() -> None:
    assert LearnerSettings().min_corrected_products == 50


def test_the_review_worker_is_named_after_its_host_unless_told_and_claims_go_stale_after_heartbeats() -> None:
    assert ReviewSettings().worker_id == socket.gethostname()
    assert ReviewSettings(worker_id="shelfsight-review-0").worker_id == "shelfsight-review-0"
    with pytest.raises(ValidationError, match=r"at least 3 x review\.heartbeat_interval_s"):
        ReviewSettings(heartbeat_interval_s=10, claim_stale_s=15)
