"""Pytest fixtures: models (owned by whoever builds against models)."""
