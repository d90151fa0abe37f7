"""Tests of learner.model."""
