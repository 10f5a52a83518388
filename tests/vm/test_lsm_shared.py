"""tests/kernel's differential, hot-reload and cgroup-record tests in lsm and fmodret modes:
the same bodies, fewer cases (TCG runs everything 10-30x slower than this machine's kernel).

In these modes a block is an EPERM before the operation (record `denied`, `$?` 126 for an
exec) where kill mode kills; the bodies take that from `harness.mode`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stockade.sensor.kernel import LsmSensor

from ..kernel import test_cgroups as cgroups
from ..kernel import test_differential as differential
from ..kernel import test_reload as reload
from ..kernel.conftest import Cgroup, Collector
from ..kernel.scenario import Harness

pytestmark = pytest.mark.vm

EXAMPLES = 12  # seeds 0..11 of test_differential's 24
EXECS = 1000  # of test_reload's 3000


@pytest.mark.parametrize("seed", range(EXAMPLES))
def test_kernel_decides_as_the_table_interpreter(
    seed: int, harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    differential.check_example(seed, harness, cgroup, workdir, tiny)


def test_flips_under_an_exec_loop(
    harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    reload.flips_under_an_exec_loop(harness, cgroup, workdir, tiny, EXECS)


def test_cgroup_records(deny_sensor: LsmSensor, cgroup: Cgroup) -> None:
    collector = Collector(deny_sensor)
    try:
        cgroups.made_and_removed(collector, cgroup)
    finally:
        collector.close()
