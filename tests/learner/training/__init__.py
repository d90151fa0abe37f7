"""Tests of learner.training."""
