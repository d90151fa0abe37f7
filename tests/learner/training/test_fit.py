"""The loop over epochs: early stopping's patience."""

from __future__ import annotations

from learner.training.fit import EarlyStopping


def test_patience_counts_from_the_last_phase_when_earlier_epochs_were_smaller() -> None:
    stopping = EarlyStopping(patience=2, ties_to_later=True, count_from=4)  # epochs 5.. are the last phase
    scores = {1: 0.5, 2: 0.4, 3: 0.4, 4: 0.4, 5: 0.4, 6: 0.4}

    stops = [stopping.update(epoch, score, None) for epoch, score in scores.items()]

    # without count_from it would stop at epoch 3; here after two non-improving epochs of the last phase
    assert stops == [False, False, False, False, False, True]
    assert stopping.best_epoch == 1
