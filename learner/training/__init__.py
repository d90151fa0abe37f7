"""Making a model: labelled data and its split rule (`data`), the first training recipe (`train`), data-parallel
fine-tuning under torchrun (`distributed`) and detector fine-tuning on annotators' boxes (`detector`).

Must not: decide promotion (that is `learner.evaluation.gate` and `learner.lifecycle`) or read configuration.
"""
