"""Process plumbing shared by the development servers in this folder (Kafka, Label Studio, PostgreSQL).

Each server script imports it as a sibling module: run as a script, Python puts this folder on `sys.path`;
the tests put it there in `tests/conftest.py`. Nothing here knows which server it is running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """Where downloads and installs live: $SHELFSIGHT_CACHE_DIR, else ~/.cache/shelfsight (never in the repo)."""
    env = os.environ.get("SHELFSIGHT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "shelfsight"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise downloads and installs between processes (several test sessions may start at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a server's log, as a block to append to an error message ('' when unreadable)."""
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {path} ---\n" + "\n".join(tail)


_spawn_requests: queue.Queue[tuple[list[str], dict[str, Any], queue.Queue[Any]]] = queue.Queue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_loop() -> None:
    while True:
        cmd, kwargs, reply = _spawn_requests.get()
        try:
            reply.put(subprocess.Popen(cmd, **kwargs))
        except BaseException as exc:
            reply.put(exc)


def spawn_from_long_lived_thread(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen from one thread that lives as long as the process: the kernel's parent-death signal
    (`setpriv --pdeathsig`) fires when the *thread* that forked the child exits, so a server restarted
    from a short-lived test thread would otherwise die with that thread."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_spawner_loop, name="dev-server-spawner", daemon=True)
            _spawner.start()
    reply: queue.Queue[Any] = queue.Queue(maxsize=1)
    _spawn_requests.put((cmd, kwargs, reply))
    result = reply.get()
    if isinstance(result, BaseException):
        raise result
    return result  # type: ignore[no-any-return]


def signal_and_wait(
    proc: subprocess.Popen[bytes] | None,
    pid: int | None,
    is_ours: Callable[[int], bool],
    sig: signal.Signals,
    timeout_s: float,
) -> None:
    """Stop a server: our child `proc` if we started it, else the recorded `pid` of a detached one, but only
    while `is_ours(pid)` says it is still that server (a recycled pid is never signalled). Escalates to
    SIGKILL after `timeout_s`."""
    if proc is not None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    elif pid is not None and is_ours(pid):
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and is_ours(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout_s
            time.sleep(0.1)
