"""Adding a title model to an existing bundle file (`shelfsight models add-title`), without retraining its image model.

`add_title_model(bundle, data, out)`: read the labelled set with the bundle's taxonomy and a title column (the one
given, else the taxonomy's `title_column`, else that of the built-in taxonomy of the same name, for a bundle made
before taxonomies named one), cut it by the bundle's own split rule (`split_rule_of`: the rule recorded in its
lineage, as `models calibrate` does), train the title model on the train split's titles and calibrate it on the
validation split's (learner/training/title.py; further sets join both splits, low-resolution sets the train split with
lighter titles, as `shelfsight train` reads them), and write the bundle with it and the title column in its taxonomy
(`store_title_model`): every other tensor as stored, so a float16 (shrunk) bundle stays float16, the title model's
tensors then too. Then, unless asked not to, the fusion of photos and title (learner/evaluation/fusion.py
`fit_bundle_fusion`, the bundle's photo calibration as stored) is fitted on the validation split, photos predicted by
the bundle as it serves them (float16 weights cast to float32), and stored with it: the bundle then reads titles
(learner/inference/product_decision.py needs both). Without it a fusion the bundle had is dropped (it was fitted with
another title model) and the bundle reads no titles until `shelfsight models calibrate` fits one (which rewrites the
weights as float32: the starter is recalibrated before it is shrunk, see deploy/demo/build_starter.sh).

Must not: print, parse options or read configuration (daemon/commands_models.py does), or touch the registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from learner.datasets.labelled import DataError, LabelledSet, load_labelled_set
from learner.evaluation.evaluate import predict_samples, split_rule_of, training_set_relation
from learner.evaluation.fusion import fit_bundle_fusion
from learner.evaluation.title_calibration import titled
from learner.model.bundle import load_bundle, read_manifest, store_title_model
from learner.model.fusion import MANIFEST_KEY as FUSION_KEY
from learner.model.fusion import Fusion
from learner.model.manifest import file_sha256
from learner.model.taxonomy import BUILTIN_TAXONOMIES, load_taxonomy
from learner.model.title_model import TitleModel
from learner.training.recipe import TrainConfig
from learner.training.title import DEFAULT_DIM, DEFAULT_EPOCHS, train_title_model


@dataclass
class TitleAddition:
    """What `add_title_model` did: the model stored (its `metrics` are validation figures), the file written, the
    title column read, titles trained and calibrated on, how the weights are stored, whether a fusion was dropped,
    and what to say about the data (None: nothing; it starts with "note:")."""

    model: TitleModel
    target: Path
    title_column: str
    train_titles: int
    val_titles: int
    weights_dtype: str
    dropped_fusion: bool
    split_note: str | None
    fusion: Fusion | None = None  # the fusion fitted and stored (None: not asked for)


def add_title_model(
    bundle_path: Path,
    data: Path,
    out: Path | None = None,
    *,
    more: Sequence[Path] = (),
    low_res: Sequence[Path] = (),
    low_res_weight: float = TrainConfig.low_res_title_weight,
    title_column: str | None = None,
    group_column: str | None = None,
    image_column: str | None = None,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    dim: int = DEFAULT_DIM,
    progress: Callable[[str], None] | None = None,
    fusion: bool = True,
    batch_size: int = 64,
    device: str = "auto",
) -> TitleAddition:
    """Train a title model on the bundle's train split of `data`, calibrate it on its validation split, and write the
    bundle with it to `out` (None: over `bundle_path`). `more`: further sets whose train and validation splits join
    `data`'s (as `shelfsight train --data A --data B` joins them); `low_res`: sets whose train split's titles only are
    trained on, each weighing `low_res_weight` (the recipe's, learner/training/recipe.py). Raises BundleError,
    DataError, TrainingError, OSError, ValueError."""
    manifest = read_manifest(bundle_path)
    bundle = load_bundle(bundle_path)
    column = title_column or bundle.taxonomy.title_column or _builtin_title_column(bundle.taxonomy.name)
    if not column:
        raise DataError(f"{bundle_path}'s taxonomy names no title_column: give the column of titles (--title-column)")
    if not 0 <= low_res_weight <= 1:
        raise ValueError(f"--low-res-title-weight must be in [0, 1], not {low_res_weight}")
    taxonomy = dataclasses.replace(bundle.taxonomy, title_column=column)
    group_column = group_column or (bundle.lineage.get("data") or {}).get("group_column")
    labelled, *further = [
        load_labelled_set(d, taxonomy, image_column=image_column, group_column=group_column) for d in (data, *more)
    ]
    thumbs = [load_labelled_set(d, taxonomy, image_column=image_column, group_column=group_column) for d in low_res]
    rule = split_rule_of(bundle)
    serving = [labelled, *further]
    train = [s for d in serving for s in d.split(rule, "train")]
    val = [s for d in serving for s in d.split(rule, "val")]
    light = [s for d in thumbs for s in d.split(rule, "train")]
    if not titled(train) or not titled(val):
        raise DataError(
            f"{', '.join(str(d.source) for d in serving)}: no titles in column {column!r} of the train or validation "
            f"split ({len(titled(train))} and {len(titled(val))} titles)"
        )
    note = None
    if training_set_relation(bundle, labelled) is None:
        note = f"note: {labelled.source} is not the bundle's training set: its split is cut by the bundle's rule"
    model = train_title_model(
        [*train, *light],
        val,
        taxonomy,
        seed=seed,
        epochs=epochs,
        dim=dim,
        progress=progress,
        weights=[1.0] * len(train) + [low_res_weight] * len(light) if light else None,
    )
    model.config["data"] = {
        "source": str(labelled.source),
        "csv_sha256": file_sha256(labelled.source),
        "split": rule.to_dict(),
        "title_column": column,
        **({"more": [_source(d) for d in further]} if further else {}),
        **({"low_res": [{**_source(d), "weight": low_res_weight} for d in thumbs]} if thumbs else {}),
    }
    fitted = None
    if fusion:
        bundle.taxonomy = bundle.classifier.taxonomy = taxonomy
        bundle.title_model = model
        predictions = predict_samples(bundle, val, taxonomy, batch_size, device)
        fitted = fit_bundle_fusion(bundle, predictions, [s.title for s in val], fitted_on={"split": "val"})
    target = out or bundle_path
    store_title_model(bundle_path, target, model, taxonomy, fitted)
    return TitleAddition(
        model,
        target,
        column,
        len(titled(train)) + len(titled(light)),
        len(titled(val)),
        str(manifest.get("weights_dtype", "float32")),
        FUSION_KEY in manifest and fitted is None,
        note,
        fitted,
    )


def _source(data: LabelledSet) -> dict[str, str]:
    return {"source": str(data.source), "csv_sha256": file_sha256(data.source)}


def _builtin_title_column(name: str) -> str | None:
    """The title column of the built-in taxonomy of that name (a bundle made before taxonomies named one)."""
    return load_taxonomy(name).title_column if name in BUILTIN_TAXONOMIES else None
