"""How many inference workers the daemon runs side by side, the onnxruntime threads of each run, and the start-up
hint when the configured backend is the slow one for the device."""

from __future__ import annotations

import os

import pytest

from daemon.config import Settings
from daemon.service import backend_hint, inference_threads

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


def test_torch_on_cpu_gets_a_start_up_hint_to_use_onnxruntime_and_the_fast_paths_get_none() -> None:
    hint = backend_hint("torch", "cpu")
    assert hint is not None and "SHELFSIGHT_BACKEND=onnxruntime" in hint
    assert backend_hint("onnxruntime", "cpu") is None
    assert backend_hint("torch", "cuda") is None
