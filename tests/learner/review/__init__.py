"""Tests of learner.review."""
