"""The live processes of test_promql_against_daemon.py: a `shelfsight` service other than `run` as a real subprocess
(`ServiceProcess`), stopping one, and a client of the real Prometheus that scrapes them (`Prometheus`,
`wait_for_data`).

What it must not do: decide what is checked (the test module does), or leave a process it started running.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import httpx

from tests.daemon.harness import DaemonProcess

from .conftest import ROOT
from .promql_expressions import JOB, LEARNER_JOB, REVIEW_JOB


# -- the scraped targets ----------------------------------------------------------------------------------------
class ServiceProcess(DaemonProcess):
    """A `shelfsight` command other than `run` as a real subprocess, with the harness's helpers (metrics, log tail,
    SIGTERM). `port_setting` names the setting that gets the process's free port."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, port_setting: str) -> None:
        super().__init__(env, log_path)
        self.args = args
        self.env[port_setting] = str(self.port)

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", *self.args], env=self.env, cwd=ROOT, stdout=log, stderr=log
        )
        return self

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of the first series `name` with these labels, None when there is none (or no answer)."""
        try:
            samples = self.metrics()
        except httpx.HTTPError:
            return None
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        for key, value in samples.items():
            metric, _, rest = key.partition("{")
            if metric == name and all(w in rest.rstrip("}").split(",") for w in wanted):
                return value
        return None


def stop_service(process: DaemonProcess) -> None:
    if process.alive:
        try:
            process.terminate(timeout_s=120)
        except subprocess.TimeoutExpired:
            process.kill()


# -- a real Prometheus -------------------------------------------------------------------------------------------
class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict]:
        """Instant query; raises AssertionError with Prometheus' own message when the query is rejected."""
        data = urllib.parse.urlencode({"query": promql}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query", data=data, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
            raise AssertionError(f"Prometheus rejected {promql!r}: {body.get('error')}") from None
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return result if isinstance(result, list) else [result]


def wait_for_data(prom: Prometheus, recording_rules: set[str], timeout_s: float = 120.0) -> None:
    """Until the target was scraped a few times and every recording rule has several samples (rate() and
    deriv() need two or more), or the timeout passes: then the tests report whatever is missing."""
    deadline = time.monotonic() + timeout_s
    waiting_for = {*(f'up{{job="{job}"}}' for job in (JOB, REVIEW_JOB, LEARNER_JOB)), *recording_rules}
    while waiting_for and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # not listening yet
            waiting_for = {name for name in waiting_for if not prom.query(f"count_over_time({name}[1m]) >= 5")}
        time.sleep(0.5)
