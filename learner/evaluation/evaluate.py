"""Evaluation of an attribute classifier: predictions on a labelled set, and the metrics computed from them.

Metrics per classifier group (only samples whose label is known count; missing labels are reported as
`skipped`):
- single-choice groups: top-1 accuracy; per-class precision, recall, F1 and support; macro-F1, the mean of
  per-class F1 over the classes *present in the evaluated split* (support > 0), so a class the split does
  not contain neither helps nor hurts; expected calibration error (ECE) of the top-1 confidence with
  `ECE_BINS` equal-width bins; the confusion matrix.
  Also `all_rows_top1`: correct values over *all* rows, those whose label is empty, `NA` or unknown to the
  taxonomy counted as errors (beside `top1`, over known values only); `autofill`: coverage and precision of
  the values auto-filled at the bundle's auto-fill threshold (every value when it has none, the behaviour
  of uncalibrated bundles); `precision_coverage`: that trade-off at every threshold (for the report's PNG).
- multi-label groups: per-class precision/recall/F1 at the bundle's per-value thresholds (0.5 when none),
  macro-F1 over present classes, micro-F1 and exact-match accuracy; F-beta (`beta`, default 1) micro and macro
  at those thresholds, and every figure again at the fixed 0.5 threshold (`at_default_threshold`) beside them.

`evaluate_bundle` measures what the tagging engine would emit: the bundle's temperatures and hierarchy-
consistent decoding are applied (`learner.inference.decoding.ValueDecoder`); `summary.hierarchy_disagreement`
is how often the raw heads' values broke the hierarchy, and `ece_uncalibrated` the ECE before temperatures.

Per-class decision thresholds (best F1, per-value F-beta) are chosen in learner/evaluation/thresholds.py.
The metric functions are pure numpy so they can be checked by hand; `predict` runs the model.
"""

from __future__ import annotations

import contextlib
import csv
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from learner.datasets.images import ImageDataset
from learner.datasets.labelled import IGNORE_INDEX, IMAGE_COLUMNS, MULTI_VALUE_SEPARATOR, LabelledSet, Sample, SplitRule
from learner.evaluation.selective import autofill_figures, coverage_at, precision_coverage_curve
from learner.evaluation.shift import guard_figures
from learner.inference.decoding import ValueDecoder
from learner.inference.engine import pick_device
from learner.inference.imaging import normalize
from learner.model.bundle import ModelBundle
from learner.model.classifier import AttributeClassifier
from learner.model.manifest import file_sha256
from learner.model.shift_guard import SCORE_KEY, free_energy
from learner.model.taxonomy import AttributeGroup, Taxonomy

ECE_BINS = 15
DEFAULT_THRESHOLD = 0.5


@dataclass
class GroupPredictions:
    """Model probabilities and ground truth of one group over an evaluated set.

    `targets` is (N,) class indices with IGNORE_INDEX for missing (single-choice), or an (N, C) multi-hot
    matrix whose missing rows are NaN (multi-label).
    """

    group: AttributeGroup
    probs: np.ndarray  # (N, C) float
    targets: np.ndarray

    def known(self) -> np.ndarray:
        """Boolean mask of the samples whose label is known."""
        if self.group.multi_label:
            return ~np.isnan(self.targets).any(axis=1)
        return self.targets != IGNORE_INDEX


class Predictions(dict[str, GroupPredictions]):
    """Per group, the model's predictions over an evaluated set; `shift_scores` (N,): each image's shift guard
    score (learner/model/shift_guard.py), the free energy of its single-choice logits."""

    shift_scores: np.ndarray


# --- running the model ------------------------------------------------------------------------------


@torch.inference_mode()
def predict(
    model: AttributeClassifier,
    loader: DataLoader[Any],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    tta: str | None = None,
) -> Predictions:
    """Probabilities for every batch of `loader` (uint8 images, target dicts) with the model in eval mode, and each
    image's shift score; `tta="flip"`: the mean of the image's and its mirror image's (as the engine's option)."""
    was_training = model.training
    model.eval()
    probs: dict[str, list[torch.Tensor]] = {g.name: [] for g in model.taxonomy.classifier_groups}
    targets: dict[str, list[torch.Tensor]] = {g.name: [] for g in model.taxonomy.classifier_groups}
    single = [g.name for g in model.taxonomy.classifier_groups if not g.multi_label]
    scores: list[np.ndarray] = []
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    for images, batch_targets in loader:
        x = normalize(images.to(device, non_blocking=True), model.preprocessing)
        with autocast:
            logits = model(torch.cat([x, x.flip(-1)]) if tta == "flip" else x)
        for name, p in model.probabilities(logits).items():
            p = p.float().cpu()
            probs[name].append((p[: len(x)] + p[len(x) :]) / 2 if tta == "flip" else p)
            targets[name].append(batch_targets[name])
        if single:
            energy = free_energy({g: logits[g].float().cpu().numpy() for g in single}, single)
            scores.append((energy[: len(x)] + energy[len(x) :]) / 2 if tta == "flip" else energy)
    model.train(was_training)
    out = Predictions(
        {
            g.name: GroupPredictions(g, torch.cat(probs[g.name]).numpy(), torch.cat(targets[g.name]).numpy())
            for g in model.taxonomy.classifier_groups
        }
    )
    out.shift_scores = np.concatenate(scores) if scores else np.zeros(0)
    return out


def evaluate_bundle(
    bundle: ModelBundle,
    data: LabelledSet,
    split: str = "test",
    split_rule: SplitRule | None = None,
    batch_size: int = 64,
    device: str = "auto",
    tta: str | None = None,
    beta: float = 1.0,
) -> tuple[dict[str, Any], int]:
    """Metrics of a bundle's classifier on one split ('train', 'val', 'test' or 'all') of a labelled set,
    with the bundle's own preprocessing, thresholds, temperatures and hierarchy, as the engine tags.
    Returns (metrics, number of images evaluated)."""
    predictions, n = predict_bundle(bundle, data, split, split_rule, batch_size, device, tta)
    return bundle_metrics(bundle, predictions, beta), n


def bundle_metrics(
    bundle: ModelBundle, predictions: Mapping[str, GroupPredictions], beta: float = 1.0
) -> dict[str, Any]:
    """Metrics of `predictions` (the bundle classifier's raw probabilities) as the engine would tag: the bundle's
    thresholds, temperatures, hierarchy and auto-fill thresholds applied, with each group's target precision;
    multi-label groups also get F-beta at `beta`."""
    metrics = compute_metrics(predictions, bundle.thresholds, ValueDecoder.for_bundle(bundle), beta)
    fitted = (bundle.calibration or {}).get("groups") or {}
    for name, m in metrics["groups"].items():
        if m.get("autofill") is not None and name in fitted:
            m["autofill"]["target_precision"] = fitted[name].get("target_precision")
    return metrics


def predict_bundle(
    bundle: ModelBundle,
    data: LabelledSet,
    split: str = "test",
    split_rule: SplitRule | None = None,
    batch_size: int = 64,
    device: str = "auto",
    tta: str | None = None,
) -> tuple[Predictions, int]:
    """The bundle's raw (uncalibrated) predictions on one split of a labelled set, and how many images."""
    rule = split_rule or split_rule_of(bundle)
    samples = data.split(rule, split)
    if not samples:
        raise ValueError(f"the {split} split of {data.source} has no images under rule {rule.describe()}")
    return predict_samples(bundle, samples, data.taxonomy, batch_size, device, tta), len(samples)


def predict_samples(
    bundle: ModelBundle,
    samples: Sequence[Sample],
    taxonomy: Taxonomy,
    batch_size: int = 64,
    device: str = "auto",
    tta: str | None = None,
) -> Predictions:
    """The bundle's raw (uncalibrated) predictions on `samples` (of one or several labelled sets of `taxonomy`),
    in their order."""
    dev = pick_device(device)
    model = bundle.classifier.to(dev).eval().to(memory_format=torch.channels_last)
    loader = DataLoader(ImageDataset(samples, taxonomy, model.preprocessing), batch_size=batch_size)
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if dev.type == "cuda" else None
    return predict(model, loader, dev, amp_dtype, tta)


def split_rule_of(bundle: ModelBundle) -> SplitRule:
    """The split rule the bundle was trained with (from its lineage), else the default rule."""
    recorded = bundle.lineage.get("split")
    return SplitRule.from_dict(recorded) if recorded else SplitRule()


def training_set_relation(bundle: ModelBundle, data: LabelledSet) -> str | None:
    """Why `data` is the set the bundle was trained on (its labels.csv has the recorded SHA-256, or is the recorded
    file, changed since), or None when it is another set: cutting another set by the bundle's hash split would
    only throw away most of it."""
    recorded = bundle.lineage.get("data") or {}
    recorded_base = recorded.get("base")
    trained_on = [recorded, *([recorded_base] if isinstance(recorded_base, dict) else [])]
    for key in ("more", "low_res"):  # the further sets a first training read (learner.training.train)
        trained_on += [d for d in recorded.get(key) or [] if isinstance(d, dict)]
    digests = {d.get("csv_sha256") for d in trained_on} - {None, ""}
    sources = {str(d["source"]) for d in trained_on if d.get("source")}
    if digests and file_sha256(Path(data.source)) in digests:
        return "its labels.csv is the bundle's training data (same SHA-256)"
    for src in sources:
        with contextlib.suppress(OSError):
            if Path(src).resolve() == Path(data.source).resolve():
                return "its labels.csv is the bundle's training file (changed since training)"
    return None


NA_LABELS = frozenset({"na", "n/a", "nan", "null", "none"})


def audit_labels(
    data: LabelledSet, samples: Sequence[Sample], image_column: str | None = None
) -> dict[str, dict[str, Any]]:
    """Per classifier group, the evaluated rows whose label is not a value of the taxonomy: `empty`, `na` (NA,
    N/A, null...) and `unknown` (value -> rows). The loader treats all of them as missing; this says which."""
    wanted = {s.sample_id for s in samples}
    with Path(data.source).open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        column = image_column or next((c for c in IMAGE_COLUMNS if c in columns), None)
        rows = list(reader) if column else []
    groups = data.taxonomy.classifier_groups
    out: dict[str, dict[str, Any]] = {g.name: {"empty": 0, "na": 0, "unknown": Counter()} for g in groups}
    seen: set[str] = set()
    for row in rows:
        name = (row.get(column or "") or "").strip()
        if name not in wanted or name in seen:
            continue
        seen.add(name)
        for g in groups:
            audit = out[g.name]
            text = (row.get(g.label_column) or "").strip()
            parts = [p.strip() for p in text.split(MULTI_VALUE_SEPARATOR)] if g.multi_label else [text]
            parts = [p for p in parts if p] if g.multi_label else parts
            if not parts or parts == [""]:
                audit["empty"] += 1
            for part in (p for p in parts if p and p not in g.values):
                if part.lower() in NA_LABELS:
                    audit["na"] += 1
                else:
                    audit["unknown"][part] += 1
    return {
        name: {**a, "unknown": dict(a["unknown"].most_common())}
        for name, a in out.items()
        if a["empty"] or a["na"] or a["unknown"]
    }


# --- metrics ----------------------------------------------------------------------------------------


def confusion_matrix(targets: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[true, predicted] counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (targets.astype(np.int64), predicted.astype(np.int64)), 1)
    return cm


def precision_recall_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1; a ratio with a zero denominator is 0."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1


def fbeta_score(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float) -> np.ndarray:
    """Per-class F-beta = (1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp): recall counts beta times as much as
    precision (beta 1: F1); 0 when there is nothing to count."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    b2 = beta * beta
    denominator = (1 + b2) * tp + b2 * fn + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, (1 + b2) * tp / denominator, 0.0)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """sum over equal-width confidence bins of |accuracy - mean confidence| * (share of samples in the bin)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = len(confidence)
    if n == 0:
        return float("nan")
    # bin i holds (i/bins, (i+1)/bins]; confidence 0 falls in the first bin
    idx = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = idx == b
        if in_bin.any():
            ece += abs(correct[in_bin].mean() - confidence[in_bin].mean()) * in_bin.sum() / n
    return float(ece)


def single_label_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    values: Iterable[str],
    predicted: np.ndarray | None = None,
    autofill_threshold: float | None = None,
    auto_filled: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of a single-choice group; rows whose target is IGNORE_INDEX are skipped (and count as errors in
    `all_rows_top1`). `predicted` (N,): the values chosen (default: the most probable ones), e.g. by
    hierarchy-consistent decoding. `autofill_threshold`: the group's, for the `autofill` figures."""
    values = list(values)
    known = targets != IGNORE_INDEX
    p, t = probs[known], targets[known].astype(np.int64)
    out: dict[str, Any] = {"kind": "single", "n": int(known.sum()), "skipped": int((~known).sum())}
    if len(t) == 0:
        return {**out, "top1": None, "top3": None, "macro_f1": None, "ece": None, "per_class": {}, "confusion": None}
    predicted = p.argmax(axis=1) if predicted is None else np.asarray(predicted, dtype=np.int64)[known]
    cm = confusion_matrix(t, predicted, len(values))
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    support = cm.sum(axis=1)
    present = support > 0
    per_class = {
        v: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "predicted": int(cm[:, i].sum()),
        }
        for i, v in enumerate(values)
        if support[i] > 0 or cm[:, i].sum() > 0
    }
    confidence = p[np.arange(len(t)), predicted]
    # rank of the true value: how many values the model scored strictly higher
    rank = (p > p[np.arange(len(t)), t][:, None]).sum(axis=1)
    return {
        **out,
        "top1": float((predicted == t).mean()),
        "all_rows_top1": float((predicted == t).sum() / len(targets)),
        "top3": float((rank < 3).mean()),
        "macro_f1": float(f1[present].mean()),
        "classes_present": int(present.sum()),
        "ece": expected_calibration_error(confidence, predicted == t),
        "autofill": coverage_at(confidence, predicted == t, autofill_threshold)
        if auto_filled is None
        else {"threshold": autofill_threshold, **autofill_figures(confidence, predicted == t, auto_filled[known])},
        "precision_coverage": precision_coverage_curve(confidence, predicted == t),
        "per_class": per_class,
        "values": values,  # row/column order of the confusion matrix
        "confusion": cm.tolist(),
    }


def multi_label_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    values: Iterable[str],
    thresholds: Mapping[str, float] | None = None,
    beta: float = 1.0,
) -> dict[str, Any]:
    """Metrics of a multi-label group at per-class thresholds (and at the fixed DEFAULT_THRESHOLD, under
    `at_default_threshold`); F-beta at `beta` beside F1; rows whose targets are NaN are skipped."""
    values = list(values)
    known = ~np.isnan(targets).any(axis=1)
    p, t = probs[known], targets[known] > 0.5
    out: dict[str, Any] = {"kind": "multi", "n": int(known.sum()), "skipped": int((~known).sum()), "beta": beta}
    if len(t) == 0:
        empty = {"micro_f1": None, "macro_f1": None, "micro_fbeta": None, "macro_fbeta": None, "exact_match": None}
        return {**out, **empty, "per_class": {}, "at_default_threshold": {"threshold": DEFAULT_THRESHOLD, **empty}}
    th = np.array([(thresholds or {}).get(v, DEFAULT_THRESHOLD) for v in values])
    figures, predicted, (precision, recall, f1, fb) = _multi_figures(p, t, th, beta)
    support = t.sum(axis=0)
    per_class = {
        v: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "fbeta": float(fb[i]),
            "support": int(support[i]),
            "predicted": int(predicted[:, i].sum()),
            "threshold": float(th[i]),
        }
        for i, v in enumerate(values)
    }
    at_default, _, _ = _multi_figures(p, t, np.full(len(values), DEFAULT_THRESHOLD), beta)
    return {
        **out,
        **figures,
        "per_class": per_class,
        "at_default_threshold": {"threshold": DEFAULT_THRESHOLD, **at_default},
    }


def _multi_figures(
    p: np.ndarray, t: np.ndarray, th: np.ndarray, beta: float
) -> tuple[dict[str, float | None], np.ndarray, tuple[np.ndarray, ...]]:
    """Micro/macro F1 and F-beta and exact match of multi-hot `t` predicted as `p >= th`; the predictions; and
    per-class (precision, recall, F1, F-beta). Macro figures average the classes present in `t`."""
    predicted = p >= th
    tp = (predicted & t).sum(axis=0)
    fp = (predicted & ~t).sum(axis=0)
    fn = (~predicted & t).sum(axis=0)
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    fb = fbeta_score(tp, fp, fn, beta)
    present = t.sum(axis=0) > 0
    all_tp, all_fp, all_fn = (a.sum(keepdims=True) for a in (tp, fp, fn))
    figures: dict[str, float | None] = {
        "micro_f1": float(precision_recall_f1(all_tp, all_fp, all_fn)[2][0]),
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "micro_fbeta": float(fbeta_score(all_tp, all_fp, all_fn, beta)[0]),
        "macro_fbeta": float(fb[present].mean()) if present.any() else None,
        "exact_match": float((predicted == t).all(axis=1).mean()),
    }
    return figures, predicted, (precision, recall, f1, fb)


def group_metrics(
    pred: GroupPredictions, thresholds: Mapping[str, float] | None = None, beta: float = 1.0
) -> dict[str, Any]:
    if pred.group.multi_label:
        return multi_label_metrics(pred.probs, pred.targets, pred.group.values, thresholds, beta)
    return single_label_metrics(pred.probs, pred.targets, pred.group.values)


def compute_metrics(
    predictions: Mapping[str, GroupPredictions],
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    decoder: ValueDecoder | None = None,
    beta: float = 1.0,
) -> dict[str, Any]:
    """Metrics of every group plus the summary figures used to compare models (multi-label F-beta at `beta`).

    `summary.mean_top1` / `summary.mean_macro_f1` average the single-choice groups that have labels here.
    With a `decoder` (a bundle's temperatures, hierarchy and auto-fill thresholds) single-choice groups are
    measured on its calibrated probabilities and decoded values, as the engine emits them.
    """
    groups = {name: group_metrics(p, (thresholds or {}).get(name), beta) for name, p in predictions.items()}
    disagreement = None
    summary_guard: dict[str, Any] | None = None
    if decoder is not None:
        probs_in: dict[str, np.ndarray] = {name: p.probs for name, p in predictions.items()}
        scores = getattr(predictions, "shift_scores", None)
        if scores is not None and len(scores):
            probs_in[SCORE_KEY] = scores
        decisions = decoder(probs_in)
        for name, probs in decisions.probs.items():
            pred = predictions[name]
            m = single_label_metrics(
                probs,
                pred.targets,
                pred.group.values,
                decisions.chosen[name],
                decoder.autofill_thresholds.get(name),
                decisions.auto_filled[name],
            )
            if decoder.temperatures.get(name, 1.0) != 1.0 and groups[name].get("ece") is not None:
                m["ece_uncalibrated"] = groups[name]["ece"]
            groups[name] = m
        if decisions.unfamiliar is not None:
            summary_guard = guard_figures(decoder, decisions)
        if decisions.disagreed is not None and len(decisions.disagreed):
            disagreement = {
                "levels": list(decoder.hierarchy.levels) if decoder.hierarchy else [],
                "rows": int(decisions.disagreed.sum()),
                "rate": float(decisions.disagreed.mean()),
            }
    top1 = [m["top1"] for m in groups.values() if m.get("top1") is not None]
    macro = [m["macro_f1"] for m in groups.values() if m.get("macro_f1") is not None]
    summary: dict[str, Any] = {
        "mean_top1": float(np.mean(top1)) if top1 else None,
        "mean_macro_f1": float(np.mean(macro)) if macro else None,
    }
    if disagreement is not None:
        summary["hierarchy_disagreement"] = disagreement
    if summary_guard is not None:
        summary["shift_guard"] = summary_guard
    return {"summary": summary, "groups": groups}


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The compact figures stored in a bundle's manifest: per group top-1, macro-F1, ECE and n."""
    out: dict[str, Any] = {"summary": dict(metrics["summary"]), "groups": {}}
    for name, m in metrics["groups"].items():
        keys = ("top1", "macro_f1", "ece", "n", "skipped") if m["kind"] == "single" else ("micro_f1", "macro_f1", "n")
        out["groups"][name] = {k: _round(m.get(k)) for k in keys}
    return out


def _round(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v
