"""The process a training runs in: seeding every generator (`seed_everything`), CPU threads (`configure_threads`) and
mixed precision (`amp_settings`, `autocast`). Shared by the classifier's and the detector's training and by the
lifecycle's holdout evaluation.

Must not: build models, data or optimisers.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(device: torch.device, threads: int | None) -> int:
    """Use every core for intra-op parallelism on CPU (the loader runs in-process there)."""
    n = threads or os.cpu_count() or 1
    if device.type == "cpu":
        torch.set_num_threads(n)
    return torch.get_num_threads()


def amp_settings(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """(autocast dtype, grad scaler): bf16 without scaler where supported, fp16 with one otherwise; CPU: none."""
    if not enabled or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Autocast to `dtype` on `device`; nothing when `dtype` is None (full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
