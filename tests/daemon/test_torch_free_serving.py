"""With the onnxruntime backend the daemon never imports torch: it is started in a fresh interpreter, processes
events end to end, and reports what it imported."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

DAEMON = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from daemon.config import Settings
    from daemon.service import run_service

    tmp, bundle, root = map(Path, sys.argv[1:4])
    settings = Settings(
        source="local",
        backend="onnxruntime",
        device="cpu",
        model_path=bundle,
        database_url=f"sqlite:///{tmp / 'db.sqlite'}",
        http_port=0,
        local={"events_dir": tmp / "events", "exit_when_idle": True},
        fetch={"file_root": root, "attempts": 1},
    )
    status = run_service(settings)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm"))
    print(json.dumps({"status": status, "torch_modules": loaded}))
    """
)


def test_the_daemon_on_onnxruntime_tags_events_without_importing_torch(tmp_path, untrained_bundle_path, cc0_images):
    events = tmp_path / "events"
    events.mkdir()
    for i, img in enumerate(cc0_images[:4]):
        event = {"schema_version": 1, "product_id": f"p{i}", "image_urls": [img.as_uri()]}
        (events / f"e{i}.json").write_text(json.dumps(event))
    bundle = Path(tmp_path / "model.safetensors")
    bundle.write_bytes(untrained_bundle_path.read_bytes())  # no ONNX beside it: the daemon has one exported

    done = subprocess.run(
        [sys.executable, "-c", DAEMON, str(tmp_path), str(bundle), str(cc0_images[0].parent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == 0
    assert report["torch_modules"] == [], "the onnxruntime daemon must not import torch"
    assert list(tmp_path.glob("model.*.onnx")), "the missing ONNX file was exported beside the bundle"
    con = sqlite3.connect(tmp_path / "db.sqlite")
    assert con.execute("SELECT COUNT(DISTINCT product_id) FROM product_attributes").fetchone()[0] == 4
    assert {r[0] for r in con.execute("SELECT model_version FROM product_attributes")} == {"cc0-untrained-test"}
