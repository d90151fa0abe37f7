"""Pytest fixtures: kafka (owned by whoever builds against kafka)."""
