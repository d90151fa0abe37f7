"""Pytest fixtures: postgres (owned by whoever builds against postgres)."""
