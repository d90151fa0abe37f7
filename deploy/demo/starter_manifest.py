"""Writes deploy/demo/starter.manifest.json: what the shipped starter bundle is, next to it (run by build_starter.sh).

The bundle's own header already carries its taxonomy, recipe, thresholds and metrics; this file repeats what a reader
of the repository (and tests/deploy/test_starter_bundle.py) needs without opening the bundle: the data set and the
SHA-256 of its labels.csv, the recipe and the command, the validation figures, the bundle's SHA-256 and size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from learner.model.manifest import file_sha256, read_manifest


def build(bundle: Path, data: Path, command: str) -> dict[str, Any]:
    m = read_manifest(bundle)
    lineage = m.get("lineage") or {}
    labels = data / "labels.csv" if data.is_dir() else data
    trained_on = (lineage.get("data") or {}).get("csv_sha256")
    labels_sha = file_sha256(labels)
    if trained_on and trained_on != labels_sha:
        raise SystemExit(f"{labels} (SHA-256 {labels_sha[:12]}) is not the labels.csv the bundle was trained on")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    metrics = m.get("metrics") or {}
    return {
        "bundle": bundle.name,
        "bundle_sha256": file_sha256(bundle),
        "bundle_bytes": bundle.stat().st_size,
        "model_version": m["model_version"],
        "backbone": m["classifier"]["backbone"],
        "weights_dtype": m.get("weights_dtype", "float32"),
        "taxonomy": m["taxonomy"]["name"],
        "groups": list(m["taxonomy"]["groups"]),
        "data": {
            "path": str(data),
            "labels_csv_sha256": labels_sha,
            "samples": (lineage.get("data") or {}).get("samples"),
            "split": lineage.get("split"),
            "split_counts": (lineage.get("data") or {}).get("split_counts"),
            **_further_sets(lineage.get("data") or {}),
        },
        "recipe": {
            "command": command,
            "train_config": lineage.get("recipe"),
            "epochs_run": lineage.get("epochs_run"),
            "best_epoch": lineage.get("best_epoch"),
            "elapsed_s": lineage.get("elapsed_s"),
            "shrunk_from": lineage.get("shrunk_from"),
        },
        "metrics": {"validation": metrics.get("validation"), "primary_metric": metrics.get("primary_metric")},
        "calibration": {
            "autofill_thresholds": m.get("autofill_thresholds"),
            "fitted_on": {k: (m.get("calibration") or {}).get(k) for k in ("data", "csv_sha256", "split", "images")},
        },
        "title_model": _title_model(m),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shelfsight_commit": commit,
    }


def _further_sets(data: dict[str, Any]) -> dict[str, Any]:
    """The folders a multi-folder training read beside the first (`shelfsight train --data A --data B
    --low-res-data C`): each one's path, labels.csv SHA-256, samples and split counts; nothing for one folder."""
    out: dict[str, Any] = {}
    for key in ("more", "low_res"):
        sets = [d for d in data.get(key) or [] if isinstance(d, dict)]
        if sets:
            out[key] = [
                {
                    "path": str(Path(d["source"]).parent),
                    "labels_csv_sha256": d.get("csv_sha256"),
                    "samples": d.get("samples"),
                    "split_counts": d.get("split_counts"),
                    **({"read": d["read"]} if d.get("read") else {}),
                }
                for d in sets
            ]
    return out


def _title_model(m: dict[str, Any]) -> dict[str, Any] | None:
    """What the bundle reads of a product's title: the title model's size and validation top-1 (as written and with
    the attribute words masked), and the fusion's weights per group; None without a title model."""
    title = m.get("title_model")
    if not title:
        return None
    metrics = title.get("metrics") or {}
    fusion = (m.get("fusion") or {}).get("groups") or {}
    return {
        "title_column": (m["taxonomy"] or {}).get("title_column"),
        "config": title.get("config"),
        "validation_top1": (metrics.get("validation") or {}).get("top1"),
        "validation_masked_top1": (metrics.get("validation_masked") or {}).get("top1"),
        "autofill_thresholds": title.get("autofill_thresholds"),
        "fusion": {
            g: {k: f.get(k) for k in ("image_weight", "title_weight", "threshold", "conflict_title", "conflict_image")}
            for g, f in fusion.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    doc = build(args.bundle, args.data, args.command)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    v = doc["metrics"]["validation"] or {}
    size = doc["bundle_bytes"] / 1e6
    print(f"wrote {args.out}: {doc['model_version']}, {size:.1f} MB, validation {v.get('summary')}")


if __name__ == "__main__":
    main()
