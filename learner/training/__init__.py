"""Making a model: the recipe (`recipe`) and loss (`loss`); the one classifier training flow (`run`, from a fresh
backbone or from a bundle) that first training (`train`) and fine-tuning a champion (`finetune`) call; its loop over
epochs with early stopping (`fit`) over the epoch loop (`engine`: `train_one_epoch`, `evaluate_epoch`); the optimiser,
schedule and weight average (`optim`); seeds, threads and mixed precision (`runtime`); data-parallel runs under
torchrun (`distributed`, and the worker `launch`); detector fine-tuning on annotators' boxes (`detector`, on the same
epoch loop); the learning-rate range test (`lr_finder`). The labelled sets and datasets it trains on are
learner.datasets'.

Must not: decide promotion (that is `learner.evaluation.gate` and `learner.lifecycle`) or read configuration.
"""
