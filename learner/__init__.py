"""The models and everything that makes, runs, judges and replaces them.

Subpackages, one per part of the product:
- `learner.model`: what a model *is* (taxonomy, backbones, classifier, detector, the bundle file format);
- `learner.inference`: running a bundle on images (decoding, preprocessing, the batched tagging engine);
- `learner.training`: making a model (labelled data, the epoch loop, recipes, data-parallel, detector fine-tuning);
- `learner.evaluation`: judging a model (metrics, reports, the promotion gate);
- `learner.review`: deciding what annotators see and reading their answers back (routing policy, caps, task format);
- `learner.lifecycle`: models over time (registry, one retraining run, the retraining schedule).

May use `connectors` (database, image fetching); never imports `daemon` and never reads global configuration:
every setting arrives as an explicit argument.
"""
