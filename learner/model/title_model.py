"""The title model: what a product's title says about its single-choice attributes. Torch-free (numpy only).

A fastText-style bag of features (learner.training.title trains it in torch; this module only runs it):
- `title_features(title)`: the title lowercased; its word tokens (`\\w+`), word bigrams, and the character
  n-grams (3 to 5) of each word wrapped in `<` `>`, each kind prefixed (`w:`, `b:`, `c:`) so they never collide;
- a vocabulary of the features seen at least twice in the training titles maps each to a row of `embedding`
  (V, D); a title's representation is the mean of its known features' rows (duplicates counted, exactly as
  torch's `EmbeddingBag(mode="mean")` computes it);
- per single-choice group a linear head (W (C, D), b (C,)) and a temperature fitted on validation titles:
  `probabilities` is softmax((h W^T + b) / T), calibrated as the image model's are;
- `autofill_thresholds`: the title-only auto-fill thresholds, fitted on validation titles by the image rule
  (learner.evaluation.selective.choose_autofill_threshold), for products whose photos give nothing.

A title that is None, empty, or has no feature the vocabulary knows gives a row of NaN in every group: no signal,
never a guess from the bias alone.

In a bundle (learner.model.bundle, manifest.py) the model is the manifest entry `title_model` (`to_manifest`) and
the tensors prefixed `title.` (`tensors`): the embedding, the heads, and the vocabulary as one uint8 tensor (its
features, UTF-8, separated by newlines, in row order) so the manifest stays small.
`mask_attribute_words` removes the taxonomy's value words from a title (the "attribute words masked" view of
evaluation: what a title says beyond naming the attribute).

Must not import torch, read files or know about bundles' file format.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learner.model.taxonomy import AttributeGroup, Taxonomy

MANIFEST_KEY = "title_model"
TENSOR_PREFIX = "title."
VOCAB_TENSOR = "title.vocab"
EMBEDDING_TENSOR = "title.embedding"
FEATURES_VERSION = 1  # bump when title_features changes: a model's vocabulary is only valid for its version
CHAR_NGRAMS = (3, 5)

_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"\w+(?:[-'’]\w+)*")


def title_features(title: str | None) -> list[str]:
    """The features of a title, in a fixed order (words, bigrams, character n-grams word by word)."""
    words = _WORD.findall((title or "").lower())
    feats = [f"w:{w}" for w in words]
    feats += [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
    lo, hi = CHAR_NGRAMS
    for w in words:
        s = f"<{w}>"
        for n in range(lo, hi + 1):
            feats += [f"c:{s[i : i + n]}" for i in range(len(s) - n + 1)]
    return feats


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _norm(token: str) -> str:
    t = token.lower()
    if t.endswith(("'s", "’s")):
        t = t[:-2]
    return _singular(re.sub(r"[-'’]", "", t))


def group_words(group: AttributeGroup) -> frozenset[str]:
    """The normalised words of the values of one group: each word, and each multi-word value written as one word
    ("Navy Blue" -> navy, blue, navyblue), singular forms."""
    out: set[str] = set()
    for value in group.values:
        words = _WORD.findall(value.lower())
        out.update(_singular(w) for w in words)
        out.add(_singular("".join(words)))
    return frozenset(out)


def attribute_words(taxonomy: Taxonomy) -> frozenset[str]:
    """The normalised words of every value of the taxonomy's single-choice classifier groups (`group_words`)."""
    return frozenset().union(*(group_words(g) for g in taxonomy.classifier_groups if not g.multi_label))


def _named(tokens: Sequence[str], vocab: frozenset[str]) -> list[bool]:
    """Per token, whether it (or it joined with the next one) is one of the normalised words `vocab`."""
    drop = [False] * len(tokens)
    for i, tok in enumerate(tokens):
        parts = [p for p in re.split(r"[-'’]", tok.lower()) if p]
        if _norm(tok) in vocab or any(_singular(p) in vocab for p in parts if len(p) > 1):
            drop[i] = True
        if i + 1 < len(tokens) and _singular(tok.lower() + tokens[i + 1].lower()) in vocab:
            drop[i] = drop[i + 1] = True
    return drop


def group_word_sets(taxonomy: Taxonomy) -> dict[str, frozenset[str]]:
    """`group_words` of every single-choice classifier group, for `named_groups` to use many times."""
    return {g.name: group_words(g) for g in taxonomy.classifier_groups if not g.multi_label}


def named_groups(
    titles: Sequence[str | None], taxonomy: Taxonomy, words: Mapping[str, frozenset[str]] | None = None
) -> dict[str, np.ndarray]:
    """Per single-choice classifier group, (N,) whether each title names one of the group's values (a word of it,
    matched as `mask_attribute_words` matches): a title that names no colour cannot contradict the photos' colour,
    and the fusion weighs it as the weaker evidence it is (learner.model.fusion). `words`: `group_word_sets(taxonomy)`,
    computed once by a caller that asks for every product."""
    sets = group_word_sets(taxonomy) if words is None else words
    candidates = [_candidate_words(_TOKEN.findall(t or "")) for t in titles]
    return {
        name: np.array([not c.isdisjoint(vocab) for c in candidates], dtype=bool).reshape(len(titles))
        for name, vocab in sets.items()
    }


def _candidate_words(tokens: Sequence[str]) -> set[str]:
    """Every normalised word `_named` looks up for `tokens`: a token names a group's value exactly when one of its
    words is in the group's vocabulary, so a title is normalised once for all groups."""
    out: set[str] = set()
    for i, tok in enumerate(tokens):
        out.add(_norm(tok))
        out.update(_singular(p) for p in re.split(r"[-'’]", tok.lower()) if len(p) > 1)
        if i + 1 < len(tokens):
            out.add(_singular(tok.lower() + tokens[i + 1].lower()))
    return out


def mask_attribute_words(title: str, taxonomy: Taxonomy, words: frozenset[str] | None = None) -> str:
    """`title` without the words that name a value of a single-choice classifier group (case-insensitive; plural
    and singular, hyphenated and joined forms: "T-Shirts", "Tshirt" and "T Shirt" all go for the value "Tshirts").
    `words`: `attribute_words(taxonomy)`, computed once by a caller masking many titles."""
    vocab = attribute_words(taxonomy) if words is None else words
    tokens = _TOKEN.findall(title)
    return " ".join(t for t, d in zip(tokens, _named(tokens, vocab), strict=True) if not d)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class TitleModel:
    """A trained title model (see the module docstring). `vocab`: feature -> embedding row; `heads`: single-choice
    group -> (W (C, D), b (C,)); `temperatures`, `autofill_thresholds`: per group (absent: 1.0 / none fitted);
    `config`: how it was trained; `metrics`: what it measured on validation titles."""

    vocab: dict[str, int]
    embedding: np.ndarray
    heads: dict[str, tuple[np.ndarray, np.ndarray]]
    temperatures: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    autofill_thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.embedding = np.ascontiguousarray(self.embedding, dtype=np.float32)
        self.heads = {
            g: (np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32)) for g, (w, b) in self.heads.items()
        }
        v, d = self.embedding.shape
        if len(self.vocab) != v:
            raise ValueError(f"title model: {len(self.vocab)} vocabulary features for {v} embedding rows")
        for g, (w, b) in self.heads.items():
            if w.ndim != 2 or w.shape[1] != d or b.shape != (w.shape[0],):
                raise ValueError(f"title model: head {g!r} of shape {w.shape}/{b.shape} does not fit dimension {d}")

    # -- running ------------------------------------------------------------------------------------------
    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.heads)

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[1])

    def feature_ids(self, title: str | None) -> list[int]:
        """Rows of the title's known features, in order, duplicates kept (what the embedding bag averages)."""
        vocab = self.vocab
        return [vocab[f] for f in title_features(title) if f in vocab]

    def has_signal(self, title: str | None) -> bool:
        return bool(title and title.strip()) and bool(self.feature_ids(title))

    def embed(self, titles: Sequence[str | None]) -> np.ndarray:
        """(N, D) mean feature embeddings; NaN rows for titles without a known feature."""
        out = np.full((len(titles), self.dim), np.nan, dtype=np.float32)
        for i, title in enumerate(titles):
            ids = self.feature_ids(title) if title and title.strip() else []
            if ids:
                out[i] = self.embedding[ids].mean(axis=0)
        return out

    def logits(self, titles: Sequence[str | None]) -> dict[str, np.ndarray]:
        """group -> (N, C) raw head outputs (before temperature); NaN rows where the title gives no signal."""
        h = self.embed(titles)
        # row by row: a matrix product over the batch rounds differently by batch size (BLAS), and a title's
        # probabilities must not depend on which titles it was read with (nor differ from reading it alone)
        return {
            g: np.concatenate([h[i : i + 1] @ w.T for i in range(len(h))] or [np.zeros((0, len(b)), h.dtype)]) + b
            for g, (w, b) in self.heads.items()
        }

    def probabilities(self, titles: Sequence[str | None], *, calibrated: bool = True) -> dict[str, np.ndarray]:
        """group -> (N, C) probabilities, temperature-scaled unless `calibrated` is False; a title without signal
        gives a row of NaN."""
        out: dict[str, np.ndarray] = {}
        for g, z in self.logits(titles).items():
            t = self.temperatures.get(g, 1.0) if calibrated else 1.0
            out[g] = _softmax(z.astype(np.float64) / t)
        return out

    def check(self, taxonomy: Taxonomy) -> None:
        """ValueError unless every head is a single-choice classifier group of `taxonomy` with its number of values."""
        single = {g.name: len(g.values) for g in taxonomy.classifier_groups if not g.multi_label}
        for g, (w, _) in self.heads.items():
            if single.get(g) != w.shape[0]:
                raise ValueError(f"title head {g!r} has {w.shape[0]} classes; the taxonomy's group has {single.get(g)}")
        for g, t in self.temperatures.items():
            if g not in self.heads or not t > 0:
                raise ValueError(f"title temperature {t} of {g!r} is not a positive number of a head")

    # -- (de)serialisation --------------------------------------------------------------------------------
    def to_manifest(self) -> dict[str, Any]:
        return {
            "kind": "bag-of-ngrams",
            "features_version": FEATURES_VERSION,
            "vocab_size": len(self.vocab),
            "dim": self.dim,
            "groups": {g: int(w.shape[0]) for g, (w, _) in self.heads.items()},
            "temperatures": {g: float(t) for g, t in self.temperatures.items()},
            "autofill_thresholds": {g: float(t) for g, t in self.autofill_thresholds.items()},
            "config": dict(self.config),
            "metrics": dict(self.metrics),
            "tensor_sha256": title_digest(self.tensors()),
        }

    def tensors(self) -> dict[str, np.ndarray]:
        ordered = sorted(self.vocab, key=self.vocab.__getitem__)
        out: dict[str, np.ndarray] = {
            VOCAB_TENSOR: np.frombuffer("\n".join(ordered).encode(), dtype=np.uint8).copy(),
            EMBEDDING_TENSOR: self.embedding,
        }
        for g, (w, b) in self.heads.items():
            out[f"{TENSOR_PREFIX}head.{g}.weight"] = w
            out[f"{TENSOR_PREFIX}head.{g}.bias"] = b
        return out

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> TitleModel:
        """The model from its manifest entry and its `title.` tensors as stored (any float dtype: cast to float32).
        ValueError when they do not describe one model, or do not match the entry's `tensor_sha256` (when it has
        one: a bundle writes it, see `title_digest`)."""
        if int(entry.get("features_version", 0)) != FEATURES_VERSION:
            raise ValueError(f"title model features_version {entry.get('features_version')} is not {FEATURES_VERSION}")
        recorded = entry.get("tensor_sha256")
        if recorded is not None and title_digest(tensors) != recorded:
            raise ValueError("title model tensors do not match their checksum (corrupt)")
        try:
            raw = np.asarray(tensors[VOCAB_TENSOR], dtype=np.uint8).tobytes().decode()
            embedding = np.asarray(tensors[EMBEDDING_TENSOR], dtype=np.float32)
            heads = {
                str(g): (
                    np.asarray(tensors[f"{TENSOR_PREFIX}head.{g}.weight"], dtype=np.float32),
                    np.asarray(tensors[f"{TENSOR_PREFIX}head.{g}.bias"], dtype=np.float32),
                )
                for g in entry["groups"]
            }
        except KeyError as exc:
            raise ValueError(f"title model tensor {exc} is missing") from None
        features = raw.split("\n") if raw else []
        return cls(
            vocab={f: i for i, f in enumerate(features)},
            embedding=embedding,
            heads=heads,
            temperatures={str(g): float(t) for g, t in (entry.get("temperatures") or {}).items()},
            config=dict(entry.get("config") or {}),
            metrics=dict(entry.get("metrics") or {}),
            autofill_thresholds={str(g): float(t) for g, t in (entry.get("autofill_thresholds") or {}).items()},
        )


def title_tensor_names(names: Iterable[str]) -> list[str]:
    """The names among `names` that belong to a title model."""
    return [k for k in names if k.startswith(TENSOR_PREFIX)]


def title_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the `title.` tensors as stored (name, dtype, shape, bytes): lets a reader of only these tensors
    (BundleInfo, without torch) detect a corrupt file. Recomputed when a bundle is shrunk."""
    h = hashlib.sha256()
    for k in sorted(title_tensor_names(tensors)):
        a = np.ascontiguousarray(tensors[k])
        h.update(k.encode())
        h.update(a.dtype.str.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()
