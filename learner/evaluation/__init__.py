"""Judging a model: per-group metrics and thresholds (`evaluate`), detection mAP (`detection`), JSON/Markdown/PNG
reports (`report`) and the promotion gate (`gate`, its paired-bootstrap statistics in `bootstrap`) that compares a
challenger with the champion on the pinned holdout.

Must not: train, or touch the registry (the lifecycle acts on the gate's decision).
"""
