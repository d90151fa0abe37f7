"""deploy/demo/starter_manifest.py records every folder a multi-folder training read (`shelfsight train --data A
--data B --low-res-data C`), with each labels.csv's SHA-256, so the manifest says what the starter learnt from."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "starter_manifest.py"


def starter_manifest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("starter_manifest", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_further_folders_of_a_multi_folder_training_are_recorded_with_their_digests() -> None:
    lineage_data = {
        "source": "/d/fashion-products/labels.csv",
        "csv_sha256": "a" * 64,
        "more": [{"source": "/d/more/labels.csv", "csv_sha256": "b" * 64, "samples": 2429, "split_counts": {}}],
        "low_res": [
            {"source": "/d/thumbs/labels.csv", "csv_sha256": "c" * 64, "samples": 23545, "read": "train split"}
        ],
    }

    further = starter_manifest()._further_sets(lineage_data)

    assert [d["path"] for d in further["more"]] == ["/d/more"]
    assert [(d["path"], d["labels_csv_sha256"], d["read"]) for d in further["low_res"]] == [
        ("/d/thumbs", "c" * 64, "train split")
    ]
    assert starter_manifest()._further_sets({"source": "/d/x/labels.csv"}) == {}  # one folder: nothing more
