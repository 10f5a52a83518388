"""Fixtures for tests that load Stockade's BPF programs into this machine's real kernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stockade.policy.model import PartName
from stockade.policy.tables import PartTables, PathTables, ResponseRow
from stockade.sensor.abi import ActionBits
from stockade.sensor.kernel import MAX_SELECTORS, Bundle, KillSensor
from stockade.sensor.paths import object_path
from stockade.sensor.records import CgroupRecord, FileRecord, ProcessRecord, decode

if TYPE_CHECKING:
    from .scenario import Harness

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


@pytest.fixture
def own_sensor(_built: None) -> Iterator[KillSensor]:
    """A sensor of the test's own, whose losses don't count against the session's."""
    with KillSensor() as s:
        s.attach()
        yield s


@dataclass(eq=False)
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


def _remove_cgroup(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir():
            _remove_cgroup(child)
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)


@pytest.fixture
def cgroup() -> Iterator[Cgroup]:
    path = Path(tempfile.mkdtemp(prefix="stk-test-", dir=CGROUP2))
    yield Cgroup(path)
    _remove_cgroup(path)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static binary that exits 0 at once."""
    from .scenario import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="stk-w-", dir="/var/tmp"))
    yield d
    subprocess.run(["umount", "-R", str(d)], capture_output=True, check=False)
    shutil.rmtree(d, ignore_errors=True)


class Collector:
    """Runs commands and returns the records they produced (cgroup records apart: any
    cgroup v2 directory of the machine made or removed meanwhile has one)."""

    def __init__(self, sensor: KillSensor) -> None:
        self.sensor = sensor
        self.records: list[Record] = []
        self.cgroups: list[CgroupRecord] = []  # every one drained so far, in arrival order
        self.rb = sensor.ring(self._take)

    def _take(self, raw: bytes) -> None:
        rec = decode(raw)
        if isinstance(rec, CgroupRecord):
            self.cgroups.append(rec)
        else:
            self.records.append(rec)

    def drain(self) -> list[Record]:
        """Everything but cgroup records written so far (waits for the stream to go quiet),
        in the order it happened (alerts come from their own ring buffer, ahead of the rest)."""
        while self.rb.poll(150):
            pass
        out, self.records = self.records, []
        return sorted(out, key=lambda r: r.header.ktime_ns)

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
    return Bundle(generation, {}, {})


def part_tables(
    part: PartName,
    ops: Mapping[str, int],
    responses: Sequence[tuple[int, int, int]],
    *,
    any_path: int = 0,
    exact: Mapping[str, int] | None = None,
    children: Mapping[str, int] | None = None,
    recursive_lpm: Mapping[str, int] | None = None,
    names: Mapping[str, int] | None = None,
    any_name: int = 0,
    requires_interactive: int = 0,
    ignore_mounts: int = 0,
    ignore_files: int = 0,
) -> PartTables:
    """Hand-made tables for loader tests; responses are (match, exclude, actions)."""
    return PartTables(
        part=part,
        selector_count=MAX_SELECTORS,
        operations=ops,
        paths=PathTables(exact or {}, children or {}, recursive_lpm or {}, any_path),
        responses=tuple(
            ResponseRow(m, x, ActionBits(a), i) for i, (m, x, a) in enumerate(responses)
        ),
        names=names or {},
        any_name=any_name,
        require_interactive=requires_interactive,
        require_not_interactive=0,
        ignore_mounts=ignore_mounts,
        ignore_files=ignore_files,
    )


@pytest.fixture
def load(sensor: KillSensor) -> Iterator[Callable[[Bundle], int]]:
    """Load a bundle (through the double-buffered reload); empties the maps afterwards."""
    yield sensor.reload
    sensor.reload(empty_bundle(0))
    sensor.reload(empty_bundle(0))


@pytest.fixture
def harness(sensor: KillSensor, workdir: Path) -> Iterator[Harness]:
    """Standalone mode on the session's sensor; its inputs live in a fresh directory."""
    from .scenario import Harness

    inputs = Path(tempfile.mkdtemp(prefix="stk-in-", dir="/var/tmp"))
    h = Harness(sensor, inputs)
    yield h
    h.close()
    sensor.reload(empty_bundle(0))
    sensor.reload(empty_bundle(0))
    shutil.rmtree(inputs, ignore_errors=True)
