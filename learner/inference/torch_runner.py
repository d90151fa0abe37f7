"""The torch classifier backend: today's eager PyTorch path behind the `ClassifierRunner` seam.

`torch.inference_mode`, channels_last (unless asked for plain eager, for benchmarks), AMP on CUDA, pinned-memory
host-to-device copies. Imported only when the torch backend serves (or for export and training).
Must not decode images or know about ONNX.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from learner.inference.imaging import normalize
from learner.model.classifier import AttributeClassifier
from learner.model.shift_guard import SCORE_KEY, free_energy


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchClassifier:
    """Runs the bundle's `AttributeClassifier`: 3 x S x S uint8 tensors in, probabilities per group out (numpy)."""

    name = "torch"

    def __init__(
        self, classifier: AttributeClassifier, device: str = "auto", amp: bool = True, channels_last: bool = True
    ) -> None:
        self.torch_device = pick_device(device)
        self.device = str(self.torch_device)
        self.channels_last = channels_last
        model = classifier.to(self.torch_device).eval()
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.preprocessing = classifier.preprocessing
        self._cuda = self.torch_device.type == "cuda"
        self.amp_dtype: torch.dtype | None = None
        if amp and self._cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def to_input(self, image: np.ndarray) -> torch.Tensor:
        """The engine's per-image input from an S x S x 3 uint8 array: a 3 x S x S uint8 tensor (a view)."""
        return torch.from_numpy(image if image.flags.writeable else image.copy()).permute(2, 0, 1)

    def mirror(self, x: torch.Tensor) -> torch.Tensor:
        """A 3 x S x S input mirrored left to right."""
        return x.flip(-1)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    @torch.inference_mode()
    def probabilities(self, inputs: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
        x = torch.stack(list(inputs))
        if self._cuda and x.device.type == "cpu":
            x = x.pin_memory().to(self.torch_device, non_blocking=True)
        x = normalize(x, self.preprocessing)
        if not self.channels_last:
            x = x.contiguous()
        with self.autocast():
            logits = self.model(x)
        out = {k: v.float().cpu().numpy() for k, v in self.model.probabilities(logits).items()}
        single = [g.name for g in self.model.taxonomy.classifier_groups if not g.multi_label]
        if single:
            out[SCORE_KEY] = free_energy({g: logits[g].float().cpu().numpy() for g in single}, single)
        return out
