"""The engine alone, for the end-to-end benchmark (tests/benchmarks/bench_e2e.py): the same images as the daemon gets,
same model and batch, in a fresh process; with `titles`, each image's product is also decided from its photo and its
title as the daemon's writer does (`engine.decider.decide_many`, a write group's products at once), so the ratio of
the two rates is what reading titles costs the engine.
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from pathlib import Path
from typing import TypeGuard

from tqdm import tqdm


def titles_for(files: list[Path]) -> dict[Path, str]:
    """Each image's product title from the labels.csv beside its images/ folder (id = the file's stem; the
    fashion-products sets' `productDisplayName`); an image without one is left out."""
    out: dict[Path, str] = {}
    for folder in {f.parent for f in files}:
        labels = folder.parent / "labels.csv"
        if not labels.is_file():
            continue
        with labels.open(newline="") as fh:
            by_id = {row.get("id", ""): row.get("productDisplayName") or "" for row in csv.DictReader(fh)}
        out.update({f: by_id[f.stem] for f in files if f.parent == folder and by_id.get(f.stem)})
    return out


def combine_engine_runs(before: dict[str, object], after: dict[str, object]) -> dict[str, object]:
    """The engine-alone figures measured before and after the daemon: rates and CPU as the mean of the two runs'
    medians; `engine_*_img_s_passes` lists every pass (before's, then after's)."""
    out: dict[str, object] = {}
    for key, value in before.items():
        other = after[key]
        if isinstance(value, list) and isinstance(other, list):
            out[key] = [*value, *other]
        else:
            out[key] = round((float(value) + float(other)) / 2, 2)  # type: ignore[arg-type]
    return out


ENGINE_PASSES = 3
# images per tag_bytes call: it decodes all of them before inferring, and thousands of decoded images held at once
# cost the engine alone about a quarter of its rate (memory traffic; 274 vs 347 images/s for 2,000 photos here),
# which the daemon, with its short bounded queues, never pays
ENGINE_CHUNK = 256


def engine_alone_figures(
    model: Path,
    backend: str,
    files: list[Path],
    full_files: list[Path],
    n: int,
    batch: int,
    titles: dict[Path, str] | None = None,
) -> dict[str, object]:
    """The engine alone, in this (fresh) process: the same images as the end-to-end run (all N, not a sample),
    same model, same batch as the daemon; the median of three passes, so one lucky or disturbed pass does not
    decide a ratio. With `titles`, every pass is followed by one that also decides each image's product from its
    photo alone (`engine_*_decided_img_s`) and one from its photo and its title (`engine_*_titles_img_s`), so the
    rates see the same minutes of this machine."""
    from learner.inference.backends import load_engine
    from learner.inference.engine import ImageTags

    engine = load_engine(model, backend, device="cpu")

    def ok(tags: object) -> TypeGuard[ImageTags]:
        return isinstance(tags, ImageTags)

    out: dict[str, object] = {}
    for name, chosen in (("224", [files[i % len(files)] for i in range(n)]), ("full", full_files)):
        if not chosen:
            continue
        payloads = [f.read_bytes() for f in chosen]
        named = [(titles or {}).get(f) for f in chosen]
        engine.tag_bytes(payloads[:batch], batch_size=batch)  # warm-up
        # "_decided": each image's product decided from its photo alone, as the daemon's writer does for an event
        # without a title; "_titles": from its photo and its title. Their ratio is what reading titles costs.
        variants = ("", "_decided", "_titles") if titles else ("",)
        rates: dict[str, list[float]] = {v: [] for v in variants}
        cpus: dict[str, list[float]] = {v: [] for v in variants}
        for _ in tqdm(range(ENGINE_PASSES), desc=f"{backend} engine alone {name}", unit="pass", file=sys.stderr):
            for variant in variants:
                t0, c0 = time.perf_counter(), time.process_time()
                for start in range(0, len(payloads), ENGINE_CHUNK):  # tag_bytes decodes all it is given first
                    tagged = engine.tag_bytes(payloads[start : start + ENGINE_CHUNK], batch_size=batch)
                    if variant:  # one product per image, the chunk decided at once as the writer does
                        chunk = zip(tagged, named[start : start + ENGINE_CHUNK], strict=True)
                        engine.decider.decide_many(
                            [([tags], title if variant == "_titles" else None) for tags, title in chunk if ok(tags)]
                        )
                rates[variant].append(len(payloads) / (time.perf_counter() - t0))
                cpus[variant].append((time.process_time() - c0) / len(payloads))
        for variant in variants:
            out[f"engine_{name}{variant}_img_s"] = round(statistics.median(rates[variant]), 2)
            out[f"engine_{name}{variant}_img_s_passes"] = [round(r, 1) for r in rates[variant]]
            out[f"engine_{name}{variant}_cpu_ms_per_img"] = round(1000 * statistics.median(cpus[variant]), 2)
    return out
