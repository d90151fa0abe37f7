"""How many inference workers the daemon runs side by side, and the onnxruntime threads of each run."""

from __future__ import annotations

import os

import pytest

from daemon.config import Settings
from daemon.service import inference_threads

CORES = len(os.sched_getaffinity(0))


def settings(**kwargs: object) -> Settings:
    return Settings(source="local", **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(CORES < 2, reason="needs two cores")
def test_onnxruntime_on_cpu_runs_two_workers_each_with_half_the_cores() -> None:
    assert inference_threads(settings(backend="onnxruntime", device="cpu")) == (2, CORES // 2)


def test_torch_runs_one_worker_with_its_own_thread_default() -> None:
    assert inference_threads(settings(backend="torch", device="cpu")) == (1, None)


def test_onnxruntime_on_cuda_runs_one_worker() -> None:
    assert inference_threads(settings(backend="onnxruntime", device="cuda:0")) == (1, None)


def test_an_explicit_worker_count_is_kept_and_splits_the_cores_on_onnxruntime_cpu() -> None:
    chosen = settings(backend="onnxruntime", device="cpu", batch={"inference_workers": 1})
    assert inference_threads(chosen) == (1, None)
    chosen = settings(backend="onnxruntime", device="cpu", batch={"inference_workers": 2 * CORES})
    assert inference_threads(chosen) == (2 * CORES, 1)
    assert inference_threads(settings(backend="torch", batch={"inference_workers": 3})) == (3, None)
