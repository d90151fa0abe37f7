"""Tests of learner.evaluation."""
