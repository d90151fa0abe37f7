"""daemon/cli_support.py: what every long-running command sets up before it starts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SERVICE = """
import threading, time
from daemon.cli_support import enable_stack_dumps
enable_stack_dumps()
def poll_loop():
    time.sleep(30)
threading.Thread(target=poll_loop, name="poller", daemon=True).start()
print("ready", flush=True)
time.sleep(4)
print("still running", flush=True)
"""


def test_sigusr1_writes_every_threads_stack_to_the_log_and_the_service_goes_on() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVICE], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "still running" in out
    assert "poll_loop" in err  # the other thread's stack, not only the main one
    assert "Current thread" in err and err.count("hread 0x") >= 2


def test_a_module_adding_to_a_sub_app_registered_too_early_says_which_module_must_come_first() -> None:
    import pytest
    import typer

    from daemon import commands_bundle, commands_models

    app = typer.Typer()
    with pytest.raises(RuntimeError, match=r"register daemon/commands_models\.py \(the `models` sub-app\) first"):
        commands_bundle.register(app)

    commands_models.register(app)
    commands_bundle.register(app)
    models = next(g.typer_instance for g in app.registered_groups if g.name == "models")
    assert models is not None
    assert {"list", "calibrate", "shrink"} <= {c.name for c in models.registered_commands}
