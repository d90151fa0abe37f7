"""The data a model learns from and is judged on: labelled sets, their missing labels and the product-id split
(`labelled`, torch-free), the train-time augmentation (`augmentation`) and the torch `Dataset` of prepared images
(`images`). Training (learner.training), evaluation (learner.evaluation) and the lifecycle all read data here.

Must not: import learner.training or learner.evaluation, build models, or read configuration.
"""
