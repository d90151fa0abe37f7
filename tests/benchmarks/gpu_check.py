"""GPU check, run by `tests/benchmarks/gpu_check.sh`: three figures at batch 256, 224 px, bf16 autocast, one GPU.

1. bare forward: the classifier on normalised, channels_last tensors already on the device;
2. engine from JPEG bytes, two ways: `TaggingEngine.tag_bytes` (Pillow decode on the CPU, the served path) and
   a device pipeline (torchvision.io.decode_jpeg on the GPU, letterbox by bicubic interpolation on the GPU, the
   engine's classifier runner) to show what decoding on the device would give;
3. end to end through the local source: `run_service` on a directory of events, SQLite, batch 256; the rate is
   taken from the processing log's first/last commit times (model loading is not counted).
Prints images/s and the ratio of each to the bare forward. Refuses to run without CUDA.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from tests.benchmarks.bench_engine import build_untrained, default_images

BATCH = 256


def synchronized_rate(fn, n_images: int, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up: cuDNN autotuning, allocator, decoder handles
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return n_images / best


def device_letterbox(images: list[torch.Tensor], size: int, pad_value: int) -> torch.Tensor:
    """uint8 3xHxW tensors on the GPU -> N x 3 x size x size uint8, aspect kept, padded (as imaging.letterbox)."""
    out = torch.full((len(images), 3, size, size), pad_value, dtype=torch.uint8, device=images[0].device)
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = torch.nn.functional.interpolate(
            img[None].float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False
        )
        top, left = (size - nh) // 2, (size - nw) // 2
        out[i, :, top : top + nh, left : left + nw] = resized[0].round().clamp(0, 255).to(torch.uint8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--images", type=Path, default=default_images())
    parser.add_argument("--n", type=int, default=4096, help="images per measurement (repeats the set if needed)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: refused: no CUDA GPU (run bench_engine.py for CPU figures)")

    import torchvision.io as tvio

    from learner.inference.backends import load_engine
    from learner.inference.imaging import normalize
    from learner.inference.torch_runner import TorchClassifier

    model = args.model
    if model is None:
        model = build_untrained("tf_efficientnet_lite0")
        print(f"no --model: built {model} (untrained heads): throughput only")
    engine = load_engine(model, "torch", device="cuda", amp=True)
    runner = engine.classifier
    assert isinstance(runner, TorchClassifier) and runner.amp_dtype is not None
    pre = engine.pre
    files = sorted(args.images.glob("*.jpg"))
    payloads = [files[i % len(files)].read_bytes() for i in range(args.n)]
    n = len(payloads)
    print(
        f"{torch.cuda.get_device_name()}, {n} images, batch {BATCH}, {pre.input_size} px, autocast {runner.amp_dtype}"
    )

    # 1. bare forward
    prepared = [engine.prepare(b).classifier_input for b in payloads[:BATCH]]
    x = normalize(torch.stack(prepared).cuda(), pre)

    @torch.inference_mode()
    def bare() -> None:
        with runner.autocast():
            for _ in range(0, n, BATCH):
                runner.model(x)

    forward = synchronized_rate(bare, n)

    # 2a. engine from JPEG bytes, served path (Pillow on the CPU)
    engine_cpu_decode = synchronized_rate(lambda: engine.tag_bytes(payloads, batch_size=BATCH), n, repeats=1)

    # 2b. engine from JPEG bytes, decoded on the device
    encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in payloads]

    @torch.inference_mode()
    def device_decode() -> None:
        for i in range(0, n, BATCH):
            images = tvio.decode_jpeg(encoded[i : i + BATCH], mode=tvio.ImageReadMode.RGB, device="cuda")
            batch = device_letterbox(images, pre.input_size, pre.pad_value)
            runner.probabilities(list(batch))  # the engine's classifier runner: normalise, autocast, forward

    engine_gpu_decode = synchronized_rate(device_decode, n, repeats=1)

    # 3. end to end through the local source (events directory -> SQLite)
    e2e = end_to_end(model, files, n)

    figures = {
        "device": torch.cuda.get_device_name(),
        "images": n,
        "batch": BATCH,
        "bare_forward_img_s": round(forward, 1),
        "engine_bytes_cpu_decode_img_s": round(engine_cpu_decode, 1),
        "engine_bytes_gpu_decode_img_s": round(engine_gpu_decode, 1),
        "e2e_local_img_s": round(e2e, 1),
    }
    print(f"{'':<34}{'images/s':>10}{'/ forward':>11}")
    for key in list(figures)[3:]:
        print(f"{key:<34}{figures[key]:>10}{figures[key] / forward:>11.3f}")  # type: ignore[operator]
    print(json.dumps(figures))


def end_to_end(model: Path, files: list[Path], n: int) -> float:
    from daemon.config import Settings
    from daemon.service import run_service

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    events = work / "events"
    events.mkdir()
    lines = [
        json.dumps({"schema_version": 1, "product_id": f"g{i:06d}", "image_urls": [files[i % len(files)].as_uri()]})
        for i in range(n)
    ]
    (events / "events.jsonl").write_text("\n".join(lines) + "\n")
    settings = Settings(
        source="local",
        model_path=model,
        device="cuda",
        database_url=f"sqlite:///{work / 'db.sqlite'}",
        http_port=0,
        reload_interval_s=0,
        local={"events_dir": events, "exit_when_idle": True},  # type: ignore[arg-type]
        fetch={"file_root": files[0].parent, "attempts": 1},  # type: ignore[arg-type]
        batch={"max_images": BATCH, "max_in_flight_events": 4 * BATCH, "decode_workers": 12},  # type: ignore[arg-type]
    )
    run_service(settings)
    con = sqlite3.connect(work / "db.sqlite")
    count, first, last = con.execute(
        "SELECT COUNT(*), MIN(first_processed_at), MAX(first_processed_at) FROM processing_log"
    ).fetchone()
    if count < n:
        print(f"warning: only {count}/{n} events were processed", file=sys.stderr)
    span = (datetime.fromisoformat(str(last)) - datetime.fromisoformat(str(first))).total_seconds()
    return (count - 1) / max(span, 1e-6)


if __name__ == "__main__":
    main()
