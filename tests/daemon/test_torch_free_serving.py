"""With the onnxruntime backend the daemon (`shelfsight run`) never imports torch: it is started in a fresh
interpreter, has the bundle's missing ONNX file exported (in a subprocess), processes events end to end, and
reports what it imported."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

# `shelfsight run` exactly as an operator starts it (configuration from the environment), in-process so that the
# interpreter can report what it imported once the daemon has stopped
DAEMON = textwrap.dedent(
    """
    import json, sys
    sys.argv = ["shelfsight", "run"]
    from daemon.cli import app
    try:
        app()
        status = 0
    except SystemExit as exc:
        status = exc.code
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

    env = {
        **os.environ,
        "SHELFSIGHT_SOURCE": "local",
        "SHELFSIGHT_BACKEND": "onnxruntime",
        "SHELFSIGHT_DEVICE": "cpu",
        "SHELFSIGHT_MODEL_PATH": str(bundle),
        "SHELFSIGHT_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "SHELFSIGHT_HTTP_PORT": "0",
        "SHELFSIGHT_LOCAL__EVENTS_DIR": str(events),
        "SHELFSIGHT_LOCAL__EXIT_WHEN_IDLE": "true",
        "SHELFSIGHT_FETCH__FILE_ROOT": str(cc0_images[0].parent),
        "SHELFSIGHT_FETCH__ATTEMPTS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", DAEMON],
        env=env,
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
