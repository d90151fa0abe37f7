"""Judging a model: per-group metrics (`evaluate`) and per-class decision thresholds (`thresholds`), calibration
(`calibration`, `selective`) and calibrating a bundle file (`recalibrate`), a bundle measured on a labelled set
(`labelled_evaluation`), detection mAP (`detection`, `detector_eval`), JSON/Markdown/PNG reports (`report`) and the
promotion gate (`gate`, its paired-bootstrap statistics in `bootstrap`) that compares a challenger with the champion
on the pinned holdout. It reads data through learner.datasets, never through learner.training.

Must not: train, or touch the registry (the lifecycle acts on the gate's decision).
"""
