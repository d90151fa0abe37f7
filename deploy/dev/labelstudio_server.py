#!/usr/bin/env python
"""A real Label Studio 1.23.2 server for development and tests, headless, with a known API token.

What it does:

* installs `label-studio==1.23.2` into its OWN virtual environment
  (`$SHELFSIGHT_CACHE_DIR/label-studio-<version>/venv`, default `~/.cache/shelfsight/`): the server pins Django,
  pandas, opencv and pyarrow, which must not meet ShelfSight's environment (about 1 GB, a minute or two once);
* initialises a template data directory once (`label-studio init`: database migrations and the admin user with
  the known token, about 30 s) and starts every server from a copy of it (ready in a few seconds);
* starts `label-studio start` on 127.0.0.1 with a clean environment (the server also reads unprefixed HOST, PORT,
  USERNAME, PASSWORD and DEBUG) and waits until `GET /health` on the requested port answers `{"status": "UP"}`
  (the server silently moves to the next port when the one asked for is taken, so only that port counts).

Two ways to use it:

* as a module: ``LabelStudioServer(workdir, document_root=...).start()`` ... ``.stop()``; ``.url``, ``.token``;
  ``tests/plugins/labelstudio.py`` does this once per test session, and ``stop()``/``start()`` keep the port
  and the data (an "annotation tool down" test);
* as a script, for developers: ``python deploy/dev/labelstudio_server.py install|start|stop|status
  [--workdir DIR] [--port 8080] [--document-root DIR]``. ``start`` leaves the server running in the background.

What it must not do: it is not a production deployment (SQLite, development credentials), it never writes into
the repository, never prints the admin password, and never signals a process it did not start (``stop`` checks
that the recorded pid is this workdir's server).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devprocess import (  # sibling module: see its docstring
    cache_root,
    file_lock,
    free_port,
    log_tail,
    pid_alive,
    signal_and_wait,
    spawn_from_long_lived_thread,
)

__all__ = [
    "LABEL_STUDIO_VERSION",
    "LabelStudioServer",
    "LabelStudioStartError",
    "LabelStudioUnavailable",
    "ensure_installed",
    "ensure_template",
]

LABEL_STUDIO_VERSION = "1.23.2"
# Development credentials (the same defaults as deploy/compose): the token is what clients use.
DEFAULT_USERNAME = "admin@shelfsight.local"
DEFAULT_PASSWORD = "shelfsight-dev"
DEFAULT_TOKEN = "shelfsight-dev-token"
READY_TIMEOUT_S = 300.0  # a wait for readiness: generous, Django starts far more slowly on a loaded machine
STOP_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 1800.0
STATE_FILE = "server.json"
LOG_FILE = "server.log"
# Environment variables passed through to the server: nothing else (see the module docstring).
_PASS_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT")


class LabelStudioUnavailable(RuntimeError):
    """Label Studio cannot be provided here: installing it (pip, network) or initialising its data failed."""


class LabelStudioStartError(RuntimeError):
    """The server exited or did not answer /health in time; the message ends with its log's tail."""


# -- installation ---------------------------------------------------------------------------------------


def _home(version: str) -> Path:
    return cache_root() / f"label-studio-{version}"


def ensure_installed(version: str = LABEL_STUDIO_VERSION) -> Path:
    """Path of the `label-studio` executable, installing it into its own venv on first use (idempotent)."""
    home = _home(version)
    venv = home / "venv"
    exe = venv / "bin" / "label-studio"
    marker = home / ".installed"
    if marker.exists() and exe.exists():
        return exe
    with file_lock(home / ".lock"):
        if marker.exists() and exe.exists():
            return exe
        shutil.rmtree(venv, ignore_errors=True)
        log_path = home / "install.log"
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--progress-bar",
                "off",
                f"label-studio=={version}",
            ],
        ]
        with open(log_path, "w") as log:
            for cmd in steps:
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                try:
                    result = subprocess.run(
                        cmd, stdout=log, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S, check=False
                    )
                except subprocess.TimeoutExpired:
                    message = f"installing label-studio=={version} timed out; see {log_path}"
                    raise LabelStudioUnavailable(message) from None
                if result.returncode != 0:
                    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                    raise LabelStudioUnavailable(
                        f"installing label-studio=={version} failed (exit {result.returncode}); is PyPI reachable?\n"
                        f"$ {' '.join(cmd)}\n{tail}"
                    )
        if not exe.exists():
            raise LabelStudioUnavailable(f"pip installed label-studio=={version} but {exe} is missing; see {log_path}")
        marker.write_text(f"label-studio {version}\n")
    return exe


def _server_env(
    data_dir: Path,
    config_dir: Path,
    *,
    username: str,
    password: str,
    token: str,
    document_root: Path | None,
) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS_THROUGH if k in os.environ}
    env.update(
        HOME=str(config_dir),
        XDG_CONFIG_HOME=str(config_dir),  # it writes label-studio/user_id there
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token,  # only applied when the user is first created (by `init`)
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",  # without it that token gets 401
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        SSRF_PROTECTION_ENABLED="false",  # webhooks to 127.0.0.1 (the review worker in tests)
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        PYTHONUNBUFFERED="1",
        # one thread per numeric library: the machine is shared with model training
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    if document_root is not None:
        env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] = "true"
        env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(document_root)
    return env


def ensure_template(
    version: str = LABEL_STUDIO_VERSION,
    *,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_PASSWORD,
    token: str = DEFAULT_TOKEN,
) -> Path:
    """A data directory initialised once (migrated database, admin user with `token`), to be copied, never
    started itself. Returns its path."""
    exe = ensure_installed(version)
    home = _home(version)
    # one template per credential set: the token is baked into the database when the user is created
    template = home / f"template-{_slug(username)}-{_slug(token)}"
    marker = template / ".initialised"
    if marker.exists():
        return template / "data"
    with file_lock(home / ".template.lock"):
        if marker.exists():
            return template / "data"
        shutil.rmtree(template, ignore_errors=True)
        data_dir, config_dir = template / "data", template / "config"
        data_dir.mkdir(parents=True)
        config_dir.mkdir(parents=True)
        env = _server_env(data_dir, config_dir, username=username, password=password, token=token, document_root=None)
        cmd = [str(exe), "init", "--no-browser", "--username", username, "--password", password]
        with open(template / "init.log", "w") as log:
            result = subprocess.run(
                cmd, env=env, cwd=template, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False
            )
        if result.returncode != 0 or not any(data_dir.glob("*.sqlite3")):
            tail = "\n".join((template / "init.log").read_text(errors="replace").splitlines()[-30:])
            raise LabelStudioUnavailable(f"`label-studio init` failed (exit {result.returncode}):\n{tail}")
        marker.write_text(f"label-studio {version} user {username}\n")
    return template / "data"


def _slug(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:10]


# -- server ---------------------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    """True when a server could listen on the port now (like the server, ignoring connections in TIME_WAIT that
    a restart leaves behind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LabelStudioServer:
    """One Label Studio process on 127.0.0.1 with its data (a copy of the template) and log in `workdir`.

    Arguments:
        workdir: scratch directory for `data/`, `config/`, `server.log` and `server.json`. An existing workdir is
            reused: its projects, tasks and annotations survive stop/start.
        port: HTTP port; None keeps the recorded one or picks a free one (kept across stop/start).
        document_root: local files under this directory can be served to annotators through a local storage
            (`/data/local-files/?d=<path relative to it>`); None disables local files.
        die_with_parent: ask the kernel to kill the server when this Python process dies, even by SIGKILL.
        username, password, token: the admin user (created in the template; `token` is its legacy API token).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        port: int | None = None,
        *,
        document_root: str | os.PathLike[str] | None = None,
        die_with_parent: bool = False,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        token: str = DEFAULT_TOKEN,
        version: str = LABEL_STUDIO_VERSION,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.document_root = Path(document_root).resolve() if document_root is not None else None
        self.die_with_parent = die_with_parent
        self.username = username
        self._password = password
        self.token = token
        self.version = version
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        state = self._read_state()
        self.port: int = port or int(state.get("port") or 0) or free_port()

    # -- public -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_FILE

    @property
    def pid(self) -> int | None:
        return self._pid

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and pid_alive(self._pid) and self._is_ours(self._pid)

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """True when GET /health on our port answers {"status": "UP"}."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout_s) as response:
                return bool(json.loads(response.read() or b"{}").get("status") == "UP")
        except (OSError, ValueError):
            return False

    def start(self, timeout_s: float = READY_TIMEOUT_S, detach: bool = False) -> LabelStudioServer:
        """Start the server (installing it and copying the template first if needed) and return once healthy.

        `detach` starts it in its own session (the `start` command: it outlives this Python process).
        """
        if self.is_running():
            return self
        exe = ensure_installed(self.version)
        template = ensure_template(self.version, username=self.username, password=self._password, token=self.token)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.data_dir.exists():
            shutil.copytree(template, self.data_dir)
        config_dir = self.workdir / "config"
        config_dir.mkdir(exist_ok=True)
        if not _port_free(self.port):
            raise LabelStudioStartError(f"port {self.port} on 127.0.0.1 is taken; pick another (--port)")
        env = _server_env(
            self.data_dir,
            config_dir,
            username=self.username,
            password=self._password,
            token=self.token,
            document_root=self.document_root,
        )
        # all options go AFTER `start` (placed before it they are silently ignored)
        cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)]
        if self.die_with_parent and shutil.which("setpriv"):
            cmd = ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n==== {stamp} starting label-studio {self.version} ====\n".encode())
            log.flush()
            spawn = spawn_from_long_lived_thread if self.die_with_parent else subprocess.Popen
            self._proc = spawn(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=detach,
            )
        finally:
            log.close()
        self._pid = self._proc.pid
        self._write_state()
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self._signal_and_wait(signal.SIGKILL, STOP_TIMEOUT_S)
            raise
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (SIGINT is ignored by a background server), waiting for exit; SIGKILL after `timeout_s`."""
        self._signal_and_wait(signal.SIGTERM, timeout_s)

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LabelStudioServer(url={self.url!r}, workdir={str(self.workdir)!r}, pid={self._pid})"

    # -- internals ----------------------------------------------------------------------------------------

    def _is_ours(self, pid: int) -> bool:
        """True when `pid` is a label-studio process whose environment names this workdir's data dir."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"label-studio" in cmdline and f"LABEL_STUDIO_BASE_DATA_DIR={self.data_dir}".encode() in environ

    def _read_state(self) -> dict[str, Any]:
        path = self.workdir / STATE_FILE
        if not path.exists():
            return {}
        state: dict[str, Any] = json.loads(path.read_text())
        pid = state.get("pid")
        if isinstance(pid, int) and pid_alive(pid) and self._is_ours(pid):
            self._pid = pid
        return state

    def _write_state(self) -> None:
        state = {"pid": self._pid, "port": self.port, "url": self.url, "version": self.version}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                self._pid = None
                raise LabelStudioStartError(f"label-studio exited with code {code}{self._log_tail()}")
            if self.healthy(timeout_s=1.0):
                return
            time.sleep(0.3)
        raise LabelStudioStartError(
            f"label-studio did not answer {self.url}/health in {timeout_s:.0f}s{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        return log_tail(self.log_path)

    def _signal_and_wait(self, sig: signal.Signals, timeout_s: float) -> None:
        signal_and_wait(self._proc, self._pid, self._is_ours, sig, timeout_s)
        self._proc = None
        self._pid = None
        if self.workdir.exists():
            self._write_state()


# -- command line ---------------------------------------------------------------------------------------


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["install", "start", "stop", "status"])
    parser.add_argument("--workdir", default=str(cache_root() / "dev-label-studio"), help="data, config and log")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: 8080 on first start)")
    parser.add_argument("--document-root", default=None, help="directory whose files annotators may see")
    args = parser.parse_args(argv)

    if args.command == "install":
        started = time.monotonic()
        print(ensure_installed())
        print(f"template data dir: {ensure_template()} ({time.monotonic() - started:.1f}s)")
        return 0
    default_port = None if (Path(args.workdir) / STATE_FILE).exists() else 8080
    server = LabelStudioServer(args.workdir, port=args.port or default_port, document_root=args.document_root)
    if args.command == "start":
        if server.is_running():
            print(f"already running: {server.url} (pid {server.pid}, log {server.log_path})")
            return 0
        started = time.monotonic()
        server.start(detach=True)
        print(f"label-studio {server.version} ready at {server.url} in {time.monotonic() - started:.1f}s")
        print(f"user {server.username}, API token {server.token} (legacy token: 'Authorization: Token ...')")
        print(f"pid {server.pid}; log {server.log_path}; stop with: python {sys.argv[0]} stop --workdir {args.workdir}")
        return 0
    if args.command == "stop":
        if not server.is_running():
            print("not running")
            return 0
        server.stop()
        print("stopped")
        return 0
    running = server.is_running()
    healthy = running and server.healthy()
    print(f"{'running' if running else 'stopped'}{' and healthy' if healthy else ''}: {server.url} ({server.workdir})")
    return 0 if running else 3


if __name__ == "__main__":
    sys.exit(_main())
