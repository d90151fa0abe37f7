"""learner.training.runtime.retain_freed_memory: large freed blocks are reused, not faulted in again.

Each case runs in a child process: the setting is process-wide and would otherwise change the allocator of the
whole test run."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest

# 40 rounds of a 64 MiB tensor written in full and freed (numpy would ask for huge pages itself); prints the
# minor page faults per round
_ROUNDS = """
import json, resource, sys
import torch
if sys.argv[1] == "retain":
    from learner.training.runtime import retain_freed_memory
    assert retain_freed_memory()
for _ in range(3):  # the first rounds fault their pages in either way
    torch.ones(16 << 20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    torch.ones(16 << 20).sum()
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40))
"""


def _faults_per_round(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True, timeout=300)
    return float(json.loads(out.stdout))


def _has_mallopt() -> bool:
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _has_mallopt(), reason="the C library has no mallopt (not glibc)")
def test_a_freed_large_block_is_reused_instead_of_faulted_in_again() -> None:
    default, retained = _faults_per_round("default"), _faults_per_round("retain")
    pages = (64 << 20) / 4096
    assert default > pages / 2, f"glibc's default maps each 64 MiB block afresh: {default:.0f} faults per round"
    # kept for reuse: most rounds reuse the freed block. The heap still grows now and then (cause not pinned down):
    # 0-2 blocks in 40 rounds on a quiet machine, one block every 10 rounds in CI; never anywhere near a block per
    # round
    assert retained < default / 3, f"kept for reuse: {retained:.0f} faults per round against {default:.0f}"
