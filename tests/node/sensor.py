"""`stockade sensor --node-name` as a child process, as the DaemonSet runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from stockade.operator.metrics import scrape
from tests.operator.conftest import STOCKADE, free_port, wait_for

__all__ = ["SensorProcess"]


class SensorProcess:
    """One node's sensor; restartable, with its state directory kept across restarts."""

    def __init__(
        self, node: str, namespace: str, kubeconfig: str, directory: Path,
        wrapper: Sequence[str] = (),
    ) -> None:  # fmt: skip
        """`wrapper`: a command the sensor runs under (e.g. setpriv with fewer capabilities)."""
        self.node = node
        self.wrapper = list(wrapper)
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.directory = directory
        self.state = directory / "state"
        self.output = directory / "events.jsonl"
        self.log = directory / "sensor.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._read = 0  # documents returned by `documents` so far

    def start(self, *extra: str, kubeconfig: str | None = None, ready: bool = True) -> None:
        """Start; `ready`: wait until a bundle is in force (/readyz)."""
        self.port = free_port()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *self.wrapper, str(STOCKADE), "sensor", "--node-name", self.node,
                    "--namespace", self.namespace, "--state-dir", str(self.state),
                    "--output", f"jsonl:{self.output}", "--metrics-port", str(self.port),
                    "--heartbeat", "2", *extra,
                ],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": kubeconfig or self.kubeconfig},
            )  # fmt: skip
        if ready:
            wait_for("the sensor's first bundle in force", self.ready, timeout=60)

    def running(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the sensor exited {self.proc.returncode}; see {self.log}")
        return True

    def ready(self) -> bool:
        return self.running() and self.metrics().get("stockade_sensor_ready") == 1.0

    def metrics(self) -> dict[str, float]:
        return scrape(self.port, timeout=2)

    def stop(self) -> int:
        """SIGTERM, as the kubelet does; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def crash(self) -> None:
        """SIGKILL: no clean-up at all."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def log_lines(self) -> list[dict[str, Any]]:
        """The sensor's JSON log lines (anything else in the log fails the test, naming it)."""
        lines = []
        for n, line in enumerate(self.log.read_text().splitlines(), 1):
            try:
                lines.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{self.log}:{n}: not a JSON log line: {line!r}")
        return lines

    def documents(self, settle: float = 0.3) -> list[dict[str, Any]]:
        """Documents written since the last call (after the output has been quiet a while)."""
        size = -1
        while True:
            time.sleep(settle)
            now = self.output.stat().st_size if self.output.exists() else 0
            if now == size:
                break
            size = now
        if not self.output.exists():
            return []
        docs = [json.loads(line) for line in self.output.read_text().splitlines() if line]
        new, self._read = docs[self._read :], len(docs)
        return new
