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
