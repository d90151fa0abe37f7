"""The process a training runs in: seeding every generator (`seed_everything`), CPU threads (`configure_threads`),
mixed precision (`amp_settings`, `autocast`) and the C allocator's handling of freed memory (`retain_freed_memory`,
for processes that train and end: `shelfsight train`, `shelfsight learn --once`). Shared by the classifier's and the
detector's training and by the lifecycle's holdout evaluation.

Must not: build models, data or optimisers.
"""

from __future__ import annotations

import contextlib
import ctypes
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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of handing it back to the kernel.

    By default every block over the mmap threshold (at most 32 MiB) is a mapping of its own, unmapped when freed, so
    each training step's large activations are fresh pages faulted in 4 KiB at a time: on CPU the kernel then takes
    a third of the time (tests/benchmarks/bench_train_step.py measures it). With `M_MMAP_MAX` = 0 large blocks come
    from the heap, and with the largest `M_TRIM_THRESHOLD` the heap is not trimmed after each step.

    For a process that trains and ends (`shelfsight train`, the retraining child `shelfsight learn --once`), not for
    the long-running service: the resident memory stays near its peak until the process exits. Returns False,
    changing nothing, where the C library has no `mallopt` (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


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
