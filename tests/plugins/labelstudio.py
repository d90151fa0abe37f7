"""Pytest fixtures: labelstudio (owned by whoever builds against labelstudio)."""
