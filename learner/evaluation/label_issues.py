"""Label issues: the labels of a labelled set that are likely wrong, each with the value the images suggest.

How (`find_label_issues`):
1. Each image's feature vector, in one pass: what the bundle's heads read (`AttributeClassifier.features`: pooled
   backbone features, tapped stages, colour histogram), or, with `features="imagenet"`, the pooled features of the
   same backbone with its ImageNet weights.
2. Per single-choice group, out-of-fold probabilities: a multinomial logistic regression on the standardised
   features (scikit-learn), `folds` folds stratified by label and grouped by product (a product's photos share a
   fold), so no row is scored by a model that saw its label.
3. cleanlab's `find_label_issues` on those probabilities (confident learning: prune by the estimated noise rate),
   ranked by self-confidence (the out-of-fold probability of the given label, lowest first).

The bundle's backbone was fine-tuned on this set's train split with these very labels, so it may have learnt some of
their mistakes: issues in the train split are found less often than in the others. `features="imagenet"` has no such
leak, at the price of features that know less of the catalog. Each issue carries its row's split under the bundle's
split rule, so the two can be told apart.

Nothing is dropped from the set here: the caller lists the issues (CSV, contact sheet) and may send them to people
(daemon/commands_data.py). Multi-label groups are not checked.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from learner.datasets.images import ImageDataset, class_index
from learner.datasets.labelled import IGNORE_INDEX, LabelledSet, Sample, SplitRule
from learner.inference.imaging import normalize
from learner.model.backbones import build_backbone
from learner.model.bundle import ModelBundle

log = logging.getLogger("shelfsight.label_issues")

FeatureSource = Literal["bundle", "imagenet"]
FEATURE_SOURCES: tuple[FeatureSource, ...] = ("bundle", "imagenet")
CSV_COLUMNS = (
    "sample_id",
    "group",
    "given",
    "suggested",
    "given_probability",
    "suggested_probability",
    "label_quality",
    "split",
    "image",
)


@dataclass(frozen=True)
class LabelIssue:
    """A label that is likely wrong. `label_quality`: the out-of-fold probability of the given label (lower is more
    likely wrong); `suggested`: the most probable other value, with its probability."""

    sample_id: str
    group: str
    given: str
    suggested: str
    given_probability: float
    suggested_probability: float
    label_quality: float
    split: str
    image: str


@dataclass
class GroupIssues:
    """One group's result: how many rows had a label, the out-of-fold top-1 (how well the features predict the
    labels), and the issues, most likely wrong first."""

    group: str
    labelled: int
    oof_top1: float
    issues: list[LabelIssue]

    def summary(self) -> dict[str, Any]:
        by_split: dict[str, int] = {}
        for issue in self.issues:
            by_split[issue.split] = by_split.get(issue.split, 0) + 1
        return {
            "labelled": self.labelled,
            "flagged": len(self.issues),
            "flagged_share": round(len(self.issues) / self.labelled, 4) if self.labelled else 0.0,
            "oof_top1": round(self.oof_top1, 4),
            "flagged_by_split": by_split,
        }


# --- features --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def extract_features(
    bundle: ModelBundle,
    samples: Sequence[Sample],
    source: FeatureSource = "bundle",
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(N, D) float32 features of `samples`' images, in order (see the module docstring); on CPU."""
    if source not in FEATURE_SOURCES:
        raise ValueError(f"features must be one of {', '.join(FEATURE_SOURCES)}, not {source!r}")
    model = bundle.classifier.eval()
    forward: Callable[[torch.Tensor], torch.Tensor] = model.features
    pre = model.preprocessing
    if source == "imagenet":
        backbone = build_backbone(model.backbone_name, pretrained=True)
        pre, forward = backbone.preprocessing, backbone.module.eval()
    loader = DataLoader(ImageDataset(list(samples), bundle.taxonomy, pre), batch_size=batch_size)
    out: list[np.ndarray] = []
    done = 0
    for images, _targets in loader:
        out.append(forward(normalize(images, pre)).float().numpy())
        done += len(images)
        if progress is not None:
            progress(done, len(samples))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


# --- out-of-fold probabilities and cleanlab ----------------------------------------------------------------------


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, groups: Sequence[str], folds: int = 5, seed: int = 0, c: float = 0.5
) -> np.ndarray:
    """(N, K) probabilities of labels 0..K-1 (every class present), each row from a logistic regression fitted on
    the other folds (stratified by label, a product's rows in one fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(labels.max()) + 1
    probs = np.zeros((len(labels), k), dtype=np.float64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only n members"
        for train_idx, test_idx in splitter.split(features, labels, groups=list(groups)):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300))
            model.fit(features[train_idx], labels[train_idx])
            classes = model.classes_.astype(int)
            probs[np.ix_(test_idx, classes)] = model.predict_proba(features[test_idx])
    return probs


def rank_label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of the likely wrong labels, most likely first (cleanlab: prune by noise rate, ranked by
    self-confidence)."""
    from cleanlab.filter import find_label_issues as cleanlab_find

    if len(labels) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(
        cleanlab_find(
            labels,
            probs,
            filter_by="prune_by_noise_rate",
            return_indices_ranked_by="self_confidence",
            n_jobs=1,
        ),
        dtype=int,
    )


def find_label_issues(
    data: LabelledSet,
    features: np.ndarray,
    split_rule: SplitRule,
    groups: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, GroupIssues]:
    """Per single-choice group (all of them, or `groups`), the labels that are likely wrong. `features` (N, D) are
    those of `data.samples`, in order."""
    if len(features) != len(data.samples):
        raise ValueError(f"{len(features)} feature rows for {len(data.samples)} samples")
    chosen = [g for g in data.taxonomy.classifier_groups if not g.multi_label and (groups is None or g.name in groups)]
    unknown = set(groups or ()) - {g.name for g in chosen}
    if unknown:
        raise ValueError(f"no single-choice group named {sorted(unknown)} in taxonomy {data.taxonomy.name!r}")
    out: dict[str, GroupIssues] = {}
    for group in chosen:
        targets = np.array([class_index(s.labels.get(group.name)) for s in data.samples])
        rows = np.flatnonzero(targets != IGNORE_INDEX)
        present = np.unique(targets[rows]) if len(rows) else np.zeros(0, dtype=int)
        if len(present) < 2 or len(rows) < 2 * folds:
            out[group.name] = GroupIssues(group.name, len(rows), float("nan"), [])
            continue
        remap = {int(c): i for i, c in enumerate(present)}
        labels = np.array([remap[int(t)] for t in targets[rows]])
        probs = out_of_fold_probabilities(
            features[rows], labels, [data.samples[i].split_key for i in rows], folds=folds, seed=seed
        )
        ranked = rank_label_issues(labels, probs)
        issues = []
        for j in ranked:
            sample = data.samples[rows[j]]
            others = probs[j].copy()
            others[labels[j]] = -1.0
            best = int(others.argmax())
            issues.append(
                LabelIssue(
                    sample_id=sample.sample_id,
                    group=group.name,
                    given=group.values[int(present[labels[j]])],
                    suggested=group.values[int(present[best])],
                    given_probability=round(float(probs[j, labels[j]]), 4),
                    suggested_probability=round(float(probs[j, best]), 4),
                    label_quality=round(float(probs[j, labels[j]]), 4),
                    split=split_rule.split_of(sample.split_key),
                    image=str(sample.image_path),
                )
            )
        top1 = float((probs.argmax(axis=1) == labels).mean())
        out[group.name] = GroupIssues(group.name, len(rows), top1, issues)
        log.info("%s: %d of %d labels flagged (out-of-fold top-1 %.3f)", group.name, len(issues), len(rows), top1)
    return out


def write_issues_csv(path: Path, results: dict[str, GroupIssues]) -> int:
    """All groups' issues in one CSV (`CSV_COLUMNS`), group by group, most likely wrong first. Returns the rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for result in results.values():
            for issue in result.issues:
                writer.writerow(asdict(issue))
                n += 1
    return n


def read_issues_csv(path: Path) -> list[LabelIssue]:
    with path.open(newline="", encoding="utf-8") as f:
        return [
            LabelIssue(
                sample_id=r["sample_id"],
                group=r["group"],
                given=r["given"],
                suggested=r["suggested"],
                given_probability=float(r["given_probability"]),
                suggested_probability=float(r["suggested_probability"]),
                label_quality=float(r["label_quality"]),
                split=r["split"],
                image=r["image"],
            )
            for r in csv.DictReader(f)
        ]
