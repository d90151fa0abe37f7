"""Making a model: the recipe (`recipe`) and loss (`loss`), the epoch loop both trainings share (`engine`), first
training (`train`), fine-tuning a champion (`finetune`), data-parallel runs under torchrun (`distributed`, and the
worker `launch`) and detector fine-tuning on annotators' boxes (`detector`). The labelled sets and datasets it
trains on are learner.datasets'.

Must not: decide promotion (that is `learner.evaluation.gate` and `learner.lifecycle`) or read configuration.
"""
