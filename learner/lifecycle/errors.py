"""The error a retraining run raises when it cannot go on (`RetrainError`), shared by the lifecycle modules.

Must not: hold logic; it exists so learner/lifecycle/holdout.py and retrain.py can raise one type without
importing each other.
"""

from __future__ import annotations


class RetrainError(RuntimeError):
    """A run cannot go on; the message says why and what to do."""
