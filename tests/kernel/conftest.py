"""Fixtures for tests that load Stockade's BPF programs into this machine's real kernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stockade.sensor.kernel import Bundle, KillSensor
from stockade.sensor.paths import object_path
from stockade.sensor.records import FileRecord, ProcessRecord, decode

REPO = Path(__file__).resolve().parents[2]
CGROUP2 = Path("/sys/fs/cgroup/unified")
if not (CGROUP2 / "cgroup.procs").exists():
    CGROUP2 = Path("/sys/fs/cgroup")

Record = ProcessRecord | FileRecord


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip kernel tests when not root."""
    if os.geteuid() != 0:
        for item in items:
            if "kernel" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs root"))


@pytest.fixture(scope="session", autouse=True)
def _built() -> None:
    subprocess.run([str(REPO / "bpf" / "build")], check=True, capture_output=True)
    assert object_path("stockade.bpf.o").exists()


@pytest.fixture(scope="session")
def sensor(_built: None) -> Iterator[KillSensor]:
    s = KillSensor()
    s.attach()
    yield s
    s.close()


@dataclass
class Cgroup:
    """A cgroup v2 directory standing in for a container."""

    path: Path
    id: int = field(init=False)

    def __post_init__(self) -> None:
        self.id = os.stat(self.path).st_ino

    def join(self) -> Callable[[], None]:
        """preexec_fn that moves the child into this cgroup."""

        def _join() -> None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

        return _join


@pytest.fixture
def cgroup() -> Iterator[Cgroup]:
    path = Path(tempfile.mkdtemp(prefix="stk-test-", dir=CGROUP2))
    yield Cgroup(path)
    for _ in range(50):
        try:
            path.rmdir()
            break
        except OSError:
            time.sleep(0.05)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="stk-w-", dir="/var/tmp"))
    yield d
    subprocess.run(["umount", "-R", str(d)], capture_output=True, check=False)
    shutil.rmtree(d, ignore_errors=True)


class Collector:
    """Runs commands and returns the records they produced."""

    def __init__(self, sensor: KillSensor) -> None:
        self.sensor = sensor
        self.records: list[Record] = []
        self.rb = sensor.ring(lambda raw: self.records.append(decode(raw)))

    def drain(self) -> list[Record]:
        """Everything written so far (waits for the stream to go quiet)."""
        while self.rb.poll(150):
            pass
        out, self.records = self.records, []
        return out

    def run(
        self, argv: list[str], cg: Cgroup | None
    ) -> tuple[subprocess.CompletedProcess[str], list[Record]]:
        """Run argv (inside cg if given) and return its result and the new records."""
        self.drain()
        res = subprocess.run(
            argv, preexec_fn=cg.join() if cg else None, capture_output=True, text=True, check=False
        )
        return res, self.drain()

    def close(self) -> None:
        self.rb.close()


@pytest.fixture
def collector(sensor: KillSensor) -> Iterator[Collector]:
    c = Collector(sensor)
    yield c
    c.close()


def empty_bundle(generation: int = 1) -> Bundle:
    """A bundle with nothing in it."""
    return {
        "generation": generation, "cgroups": {}, "ops": {}, "parts": {}, "paths": {},
        "names": {}, "responses": {},
    }  # fmt: skip


@pytest.fixture
def load(sensor: KillSensor) -> Iterator[Callable[[Bundle], int]]:
    """Load a bundle (through the double-buffered reload); empties the maps afterwards."""
    yield sensor.reload
    sensor.reload(empty_bundle(0))
    sensor.reload(empty_bundle(0))
