"""Tests of learner.inference."""
