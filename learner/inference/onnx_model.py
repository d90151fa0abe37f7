"""The onnxruntime classifier backend and the ONNX file cache beside each bundle. Torch-free.

An exported classifier (see `learner.inference.onnx_export`) lives next to its bundle as
`<bundle stem>.<first 16 hex of the bundle's SHA-256>.onnx` (or in a cache directory the caller names), so a
replaced bundle never meets a stale graph; the file's metadata repeats the full SHA-256 and is checked on load.
When the file is missing, `ensure_onnx` has it made in a subprocess (`python -m learner.inference.onnx_export`):
the export needs torch, the serving process must not import it.

Must not import torch, read configuration or decide which backend serves (that is `learner.inference.backends`).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from learner.model.manifest import BundleError
from learner.model.shift_guard import SCORE_KEY, free_energy

log = logging.getLogger("shelfsight.onnx")

EXPORT_FORMAT = "shelfsight-onnx-1"  # bump when the graph's inputs or outputs change: old files are re-exported
META_BUNDLE_SHA256 = "shelfsight.bundle_sha256"
META_MODEL_VERSION = "shelfsight.model_version"
META_FORMAT = "shelfsight.format"
EXPORT_COMMAND = "shelfsight models export {bundle} --format onnx"
# On CPU a batch runs as micro-batches: their activations stay in the cores' caches; results are equal. Measured on the
# 2-core machine (starter model, 224 px, batches of 32; docs/benchmarks.md): a run on two threads is fastest at 4
# images (412 images/s; 326 at 32, 351 at 1, whose parallel sections are too small to split), a single-threaded run at
# 1 (two such runs side by side, the daemon's default on CPU: 440-464 images/s at 1, 401-409 at 4)
CPU_MICRO_BATCH = 4
CPU_MICRO_BATCH_ONE_THREAD = 1


def onnx_path_for(bundle_path: Path, bundle_sha256: str, cache_dir: Path | None = None) -> Path:
    """Where the ONNX export of this bundle lives: beside it, or in `cache_dir`."""
    directory = cache_dir if cache_dir is not None else bundle_path.parent
    return directory / f"{bundle_path.stem}.{bundle_sha256[:16]}.onnx"


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def ensure_onnx(bundle_path: Path, bundle_sha256: str, cache_dir: Path | None = None, timeout_s: float = 900.0) -> Path:
    """The bundle's ONNX file, exported first (in a subprocess, torch stays out of this process) when missing."""
    path = onnx_path_for(bundle_path, bundle_sha256, cache_dir)
    if path.is_file():
        return path
    log.info("no ONNX export of %s yet: exporting it to %s in a subprocess", bundle_path, path)
    command = [sys.executable, "-m", "learner.inference.onnx_export", str(bundle_path), str(path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise BundleError(
            f"exporting {bundle_path} to ONNX took over {timeout_s:.0f}s; export it beforehand: "
            + EXPORT_COMMAND.format(bundle=bundle_path)
        ) from None
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise BundleError(
            f"exporting {bundle_path} to ONNX failed (exit {done.returncode}): {' | '.join(tail)}; "
            f"run `{EXPORT_COMMAND.format(bundle=bundle_path)}` to see why"
        )
    return path


class OnnxClassifier:
    """Runs an exported classifier: uint8 S x S x 3 images in, probabilities per group out (numpy)."""

    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        groups: Sequence[str],
        *,
        device: str = "auto",
        threads: int | None = None,
        expect_sha256: str | None = None,
        micro_batch: int | None = None,
        score_groups: Sequence[str] = (),
    ) -> None:
        """`micro_batch`: images per run on CPU (None: `CPU_MICRO_BATCH_ONE_THREAD` for a single-threaded session,
        else `CPU_MICRO_BATCH`); on CUDA a batch is always one run. `score_groups`: the single-choice groups whose
        logits give the shift guard's score (`SCORE_KEY` in what `probabilities` returns); empty: no score."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # no busy-waiting between runs: the decode threads of the same process need those cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        wants_cuda = device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available)
        if wants_cuda and "CUDAExecutionProvider" not in available:
            raise BundleError(
                f"device {device!r} asks for CUDA but this onnxruntime has no CUDA provider "
                "(install onnxruntime-gpu, or use --device cpu / the torch backend)"
            )
        providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
        if wants_cuda:
            index = device.split(":", 1)[1] if ":" in device else "0"
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise BundleError(f"{path}: onnxruntime cannot load it ({exc}); delete it to have it re-exported") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(META_FORMAT) != EXPORT_FORMAT:
            raise BundleError(f"{path}: export format {meta.get(META_FORMAT)!r} is not {EXPORT_FORMAT!r}; delete it")
        if expect_sha256 is not None and meta.get(META_BUNDLE_SHA256) != expect_sha256:
            raise BundleError(f"{path} was exported from another bundle (SHA-256 differs); delete it")
        self.path = path
        self.groups = list(groups)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.score_groups = list(score_groups)
        self._outputs = [f"prob.{g}" for g in self.groups] + [f"logits.{g}" for g in self.score_groups]
        self._input = self.session.get_inputs()[0].name
        if micro_batch is None:
            micro_batch = CPU_MICRO_BATCH_ONE_THREAD if threads == 1 else CPU_MICRO_BATCH
        self.micro_batch = micro_batch if self.device == "cpu" else None

    def to_input(self, image: np.ndarray) -> np.ndarray:
        """The engine's per-image input from an S x S x 3 uint8 array: the array itself."""
        return image

    def mirror(self, x: np.ndarray) -> np.ndarray:
        """An S x S x 3 input mirrored left to right (the width is axis 1)."""
        return np.ascontiguousarray(x[:, ::-1])

    def probabilities(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        step = self.micro_batch or len(inputs)
        parts = [
            self.session.run(self._outputs, {self._input: np.stack(inputs[i : i + step])})
            for i in range(0, len(inputs), step)
        ]
        out = {
            g: np.concatenate([np.asarray(p[k], dtype=np.float32) for p in parts]) for k, g in enumerate(self.groups)
        }
        if self.score_groups:
            first = len(self.groups)
            logits = {
                g: np.concatenate([np.asarray(p[first + k]) for p in parts]) for k, g in enumerate(self.score_groups)
            }
            out[SCORE_KEY] = free_energy(logits, self.score_groups)
        return out
