"""A real Apache Kafka broker for development and tests: single node, KRaft mode, on 127.0.0.1.

What it does: resolves the broker jars (`org.apache.kafka:kafka_2.13`) from Maven Central into a cache OUTSIDE
the repository (kafka_jars.py, a sibling module), formats a KRaft storage
directory and runs `kafka.Kafka` as one process that is both broker and controller. Only the first run
downloads (about 45 MB); later starts take a few seconds.

Two ways to use it:

* as a module: ``KafkaBroker(workdir).start()`` ... ``.stop()``; ``tests/plugins/kafka.py`` does this
  once per test session, and ``restart()`` keeps the port and the data (a "broker restarted" test);
* as a script, for developers: ``python deploy/dev/kafka_server.py start|stop|status|fetch
  [--workdir DIR] [--port 9092]``. ``start`` leaves the broker running in the background.

What it must not do: it is not a production deployment (no replication, no security, small heap, data
in a scratch directory), it never writes into the repository, and it never kills a process it did not
start (``stop`` checks that the recorded pid is this workdir's broker).

Needs Java 17+ and Maven on PATH (Kafka 4.x brokers need Java 17).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from devprocess import (  # sibling module: see its docstring
    cache_root,
    free_port,
    log_tail,
    pid_alive,
    signal_and_wait,
    spawn_from_long_lived_thread,
)
from kafka_jars import (  # sibling module: the broker's jars and the Java it runs on
    KAFKA_VERSION,
    KafkaUnavailable,
    ensure_jars,
    require_java,
)

__all__ = ["KAFKA_VERSION", "KafkaBroker", "KafkaStartError", "KafkaUnavailable", "ensure_jars", "free_port"]

DEFAULT_HEAP = "512m"
DEFAULT_JVM_OPTIONS = (
    "-XX:+UseSerialGC",  # one GC thread: the machine is shared with model training
    "-XX:ActiveProcessorCount=2",
    # C1 only: starts in ~3 s instead of ~5 s and spends less CPU compiling; a test broker never needs
    # C2's peak throughput (pass jvm_options=DEFAULT_JVM_OPTIONS[:2] to measure the broker itself).
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
)
READY_TIMEOUT_S = 180.0  # a wait for readiness: a few seconds on a quiet machine, far longer on a loaded one
STOP_TIMEOUT_S = 30.0
STATE_FILE = "broker.json"
LOG_FILE = "broker.log"


class KafkaStartError(RuntimeError):
    """The broker process exited or did not answer in time; the message ends with its log's tail."""


# -- broker -------------------------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _is_our_broker(pid: int, properties: Path) -> bool:
    """True when `pid` is a `kafka.Kafka` JVM started with this workdir's server.properties."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline and str(properties).encode() in cmdline


class KafkaBroker:
    """One Kafka process (broker + KRaft controller) on 127.0.0.1, with its data and log in `workdir`.

    Arguments:
        workdir: scratch directory for `data/`, `server.properties`, `broker.log` and `broker.json`.
            An existing formatted workdir is reused (its data survives stop/start).
        port: client port; None picks a free one (kept across `restart()`).
        partitions: `num.partitions`, the default for topics created without a partition count.
        heap: JVM max heap.
        auto_create_topics: broker-side `auto.create.topics.enable`; off by default so a misspelt
            topic fails loudly (create topics with `connectors.kafka_producers.ensure_topics`).
        die_with_parent: ask the kernel to kill the JVM when this Python process dies, even by
            SIGKILL (tests: no stray brokers after a crashed pytest).
        version: Kafka version whose jars are used.
        jvm_options: JVM flags besides the heap (default: one GC thread, C1 compiler only).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        port: int | None = None,
        partitions: int = 3,
        *,
        heap: str = DEFAULT_HEAP,
        auto_create_topics: bool = False,
        die_with_parent: bool = False,
        version: str = KAFKA_VERSION,
        jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.partitions = partitions
        self.heap = heap
        self.auto_create_topics = auto_create_topics
        self.die_with_parent = die_with_parent
        self.version = version
        self.jvm_options = list(jvm_options)
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        state = self._read_state()
        self.port: int = port or state.get("port") or free_port()
        self.controller_port: int = state.get("controller_port") or free_port()
        if self.controller_port == self.port:
            self.controller_port = free_port()

    # -- public -----------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """`host:port` for clients (`bootstrap_servers`)."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_FILE

    @property
    def pid(self) -> int | None:
        return self._pid

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and pid_alive(self._pid) and _is_our_broker(self._pid, self._properties)

    def start(self, timeout_s: float = READY_TIMEOUT_S, detach: bool = False) -> KafkaBroker:
        """Start the broker and return once it serves metadata and lists itself as a live broker.

        `detach` starts it in its own session (the `start` command: it outlives this Python process).
        """
        if self.is_running():
            return self
        java = require_java()
        libs = ensure_jars(self.version)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self._data_dir / "meta.properties").exists():
            self._format(java, libs)
        cmd = [
            java,
            "-Xms64m",
            f"-Xmx{self.heap}",
            *self.jvm_options,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.workdir}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self._properties),
        ]
        if self.die_with_parent and shutil.which("setpriv"):
            cmd = ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting kafka {self.version} ====\n".encode())
            log.flush()
            spawn = spawn_from_long_lived_thread if self.die_with_parent else subprocess.Popen
            self._proc = spawn(
                cmd,
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
            self.kill()
            raise
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Controlled shutdown (SIGTERM), waiting for the process to exit; SIGKILL after `timeout_s`."""
        self._signal_and_wait(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL, as in a crash (the data directory then needs log recovery on the next start)."""
        self._signal_and_wait(signal.SIGKILL, STOP_TIMEOUT_S)

    def restart(self, timeout_s: float = READY_TIMEOUT_S) -> KafkaBroker:
        """Stop and start again on the same port with the same data: topics and committed offsets survive."""
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"KafkaBroker(bootstrap={self.bootstrap!r}, workdir={str(self.workdir)!r}, pid={self._pid})"

    # -- internals --------------------------------------------------------------------------------

    @property
    def _data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def _properties(self) -> Path:
        return self.workdir / "server.properties"

    def _read_state(self) -> dict[str, int]:
        path = self.workdir / STATE_FILE
        if not path.exists():
            return {}
        state: dict[str, int] = json.loads(path.read_text())
        pid = state.get("pid")
        if isinstance(pid, int) and _is_our_broker(pid, self._properties):
            self._pid = pid
        return state

    def _write_state(self) -> None:
        state = {
            "pid": self._pid,
            "port": self.port,
            "controller_port": self.controller_port,
            "bootstrap": self.bootstrap,
            "version": self.version,
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _write_config(self) -> None:
        c = self.controller_port
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{c}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{c}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self._data_dir),
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            # one node: every internal topic has one replica
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",  # default 50 slows the first group join
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            # groups: no initial delay, and allow the short session timeouts tests use
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            # after a kill, the new incarnation waits for the old one's session to expire (default 9 s)
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "1000",
            # small machine
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "2",
            "log.cleaner.threads": "1",
        }
        text = "# Generated by deploy/dev/kafka_server.py; rewritten on every start.\n"
        text += "".join(f"{key}={value}\n" for key, value in settings.items())
        self._properties.write_text(text)
        (self.workdir / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.out.type = Console\n"
            "appender.out.name = OUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.out.ref = OUT\n"
            "logger.state.name = state.change.logger\n"
            "logger.state.level = WARN\n"
        )

    def _format(self, java: str, libs: Path) -> None:
        cmd = [
            java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={_new_cluster_id()}",  # '=' form: a random id may start with '-'
            "--config",
            str(self._properties),
            "--ignore-formatted",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        with open(self.log_path, "a") as log:
            log.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise KafkaStartError(f"formatting {self._data_dir} failed:\n{(result.stdout + result.stderr)[-3000:]}")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not _port_open(self.port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise KafkaStartError(f"broker did not open port {self.port} in {timeout_s:.0f}s{self._log_tail()}")
            time.sleep(0.1)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if self._serves_metadata():
                    return
            except Exception as exc:  # any client error means "not yet"
                last_error = exc
            time.sleep(0.2)
        raise KafkaStartError(f"broker did not become ready in {timeout_s:.0f}s ({last_error!r}){self._log_tail()}")

    def _serves_metadata(self) -> bool:
        from kafka import KafkaAdminClient  # type: ignore[import-untyped]  # imported late: `fetch` needs no kafka-python

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, bootstrap_timeout_ms=2000, request_timeout_ms=2000)
        try:
            return bool(admin.describe_cluster().get("brokers"))
        finally:
            admin.close()

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            code = self._proc.returncode
            self._proc = None
            self._pid = None
            raise KafkaStartError(f"broker exited with code {code}{self._log_tail()}")

    def _log_tail(self) -> str:
        return log_tail(self.log_path)

    def _signal_and_wait(self, sig: signal.Signals, timeout_s: float) -> None:
        signal_and_wait(self._proc, self._pid, lambda pid: _is_our_broker(pid, self._properties), sig, timeout_s)
        self._proc = None
        self._pid = None
        if self.workdir.exists():
            self._write_state()


# -- command line -------------------------------------------------------------------------------------


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["start", "stop", "status", "fetch"])
    parser.add_argument("--workdir", default=str(cache_root() / "dev-broker"), help="data, config and log")
    parser.add_argument("--port", type=int, default=None, help="client port (default: 9092 on first start)")
    parser.add_argument("--partitions", type=int, default=3, help="num.partitions for new topics")
    args = parser.parse_args(argv)

    if args.command == "fetch":
        print(ensure_jars())
        return 0
    broker = KafkaBroker(args.workdir, port=args.port or _default_dev_port(args.workdir), partitions=args.partitions)
    if args.command == "start":
        if broker.is_running():
            print(f"already running: {broker.bootstrap} (pid {broker.pid}, log {broker.log_path})")
            return 0
        started = time.monotonic()
        broker.start(detach=True)
        print(f"kafka {broker.version} ready at {broker.bootstrap} in {time.monotonic() - started:.1f}s")
        print(f"pid {broker.pid}; log {broker.log_path}; stop with: python {sys.argv[0]} stop --workdir {args.workdir}")
        return 0
    if args.command == "stop":
        if not broker.is_running():
            print("not running")
            return 0
        broker.stop()
        print("stopped")
        return 0
    running = broker.is_running()
    print(f"{'running' if running else 'stopped'}: {broker.bootstrap} (workdir {broker.workdir})")
    return 0 if running else 3


def _default_dev_port(workdir: str) -> int | None:
    """9092 for a new developer broker, so tools with default settings find it; later the recorded port."""
    return None if (Path(workdir) / STATE_FILE).exists() else 9092


if __name__ == "__main__":
    sys.exit(_main())
