"""The error training raises when it cannot start or gave no usable model (`TrainingError`).

Must not: hold anything else; the detector's own error is learner/training/detector.py's `DetectorTrainingError`.
"""

from __future__ import annotations


class TrainingError(ValueError):
    """Training cannot start or gave no usable model; the message says what to change (recipe or data)."""
