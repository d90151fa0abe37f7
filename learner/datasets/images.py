"""Labelled samples as tensors: per-group targets, images decoded and letterboxed exactly as the engine does,
train-time augmentation applied, in a torch `Dataset` (`ImageDataset`) that training and evaluation both read.

Reading and splitting a labelled set is learner/datasets/labelled.py (torch-free); this module is what needs torch.
Must not: read CSV files, decide splits, or know about models and optimisers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from learner.datasets.augmentation import Augmentation
from learner.datasets.labelled import IGNORE_INDEX, DataError, Label, Sample
from learner.inference.imaging import ImageDecodeError, decode_image, letterbox, pil_to_uint8_tensor
from learner.model.preprocessing import Preprocessing
from learner.model.taxonomy import Taxonomy

# images are decoded once and kept in memory when they fit under this budget (bytes of uint8 pixels)
DEFAULT_CACHE_BYTES = 3 * 1024**3


# --- targets ----------------------------------------------------------------------------------------


def encode_targets(samples: Sequence[Sample], taxonomy: Taxonomy) -> dict[str, torch.Tensor]:
    """Per group: int64 class indices with IGNORE_INDEX for missing (single-choice groups), or a float
    multi-hot matrix whose rows are NaN for missing (multi-label groups)."""
    out: dict[str, torch.Tensor] = {}
    for g in taxonomy.classifier_groups:
        if g.multi_label:
            t = torch.zeros(len(samples), len(g.values))
            for i, s in enumerate(samples):
                label = s.labels.get(g.name)
                if label is None:
                    t[i] = float("nan")
                else:
                    assert isinstance(label, tuple)
                    t[i, list(label)] = 1.0
        else:
            t = torch.tensor(
                [class_index(s.labels.get(g.name)) for s in samples],
                dtype=torch.int64,
            )
        out[g.name] = t
    return out


def class_index(label: Label) -> int:
    """A single-choice sample's target: its class index, or IGNORE_INDEX when it has no usable label."""
    if label is None:
        return IGNORE_INDEX
    if isinstance(label, tuple):
        raise TypeError(f"a single-choice group's label is one class index, not {label!r}")
    return int(label)


# --- images -----------------------------------------------------------------------------------------


def prepare_image(data: bytes, pre: Preprocessing) -> torch.Tensor:
    """Bytes -> 3 x S x S uint8 model input, exactly as `TaggingEngine.prepare` does without a detector."""
    img = decode_image(data, draft_size=pre.input_size * 2)
    return pil_to_uint8_tensor(letterbox(img, pre))


class ImageDataset(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """Samples -> (3 x S x S uint8 image, {group: target}). Images are decoded once and cached in memory
    when they fit in `cache_bytes`; augmentation (if any) is applied afresh on every access."""

    def __init__(
        self,
        samples: Sequence[Sample],
        taxonomy: Taxonomy,
        pre: Preprocessing,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.samples = list(samples)
        self.taxonomy = taxonomy
        self.pre = pre
        self.augmentation = augmentation
        self.targets = encode_targets(self.samples, taxonomy)
        self.seed = seed
        # in shared memory: loader workers (persistent ones too, which keep the copy of the dataset they started
        # with) read the epoch the trainer set, not the one they were started in
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._cache: list[torch.Tensor | None] | None = None
        if len(self.samples) * 3 * pre.input_size**2 <= cache_bytes:
            self._cache = [None] * len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def caches_images(self) -> bool:
        return self._cache is not None

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations for a new epoch (deterministically from the seed), in this process and in every
        loader worker, running or not."""
        self._epoch.fill_(epoch)

    def image(self, i: int) -> torch.Tensor:
        if self._cache is not None and (cached := self._cache[i]) is not None:
            return cached
        path = self.samples[i].image_path
        try:
            x = prepare_image(path.read_bytes(), self.pre)
        except ImageDecodeError as exc:
            raise DataError(f"{path} (sample {self.samples[i].sample_id}) cannot be decoded: {exc}") from None
        if self._cache is not None:
            self._cache[i] = x
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.image(i)
        if self.augmentation is not None:
            # one generator per (seed, epoch, index): identical with any number of loader workers
            x = self.augmentation(x, random.Random(f"{self.seed}:{self.epoch}:{i}"))
        return x, {name: t[i] for name, t in self.targets.items()}
