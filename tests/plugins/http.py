"""Pytest fixtures: http (owned by whoever builds against http)."""
