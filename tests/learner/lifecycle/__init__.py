"""Tests of learner.lifecycle."""
