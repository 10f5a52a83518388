"""Fixtures for the lsm-mode tests: they run only inside the test VM (`e2e/vm/run`, which
sets STOCKADE_VM=1), where the kernel has BPF LSM enabled. tests/kernel's cgroup, workdir and
tiny fixtures and its standalone harness are reused with the lsm-mode sensor."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.sensor.kernel import LsmSensor

from ..kernel.conftest import cgroup, empty_bundle, tiny, workdir
from ..kernel.scenario import Harness

__all__ = ["LsmHarness", "cgroup", "tiny", "workdir"]

IN_VM = os.environ.get("STOCKADE_VM") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: runs only inside the BPF LSM test VM (e2e/vm/run)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Outside the VM (STOCKADE_VM unset) the vm tests are skipped."""
    for item in items:
        if "vm" in item.keywords and not IN_VM:
            item.add_marker(pytest.mark.skip(reason="runs inside the test VM: e2e/vm/run"))


class LsmHarness(Harness):
    """tests/kernel's standalone harness with the lsm-mode sensor."""

    mode = "lsm"


@pytest.fixture(scope="session")
def lsm_sensor() -> Iterator[LsmSensor]:
    s = LsmSensor()
    s.attach()
    yield s
    s.close()


@pytest.fixture
def harness(lsm_sensor: LsmSensor, workdir: Path) -> Iterator[LsmHarness]:
    inputs = Path(tempfile.mkdtemp(prefix="stk-in-", dir="/var/tmp"))
    h = LsmHarness(lsm_sensor, inputs)
    yield h
    h.close()
    lsm_sensor.reload(empty_bundle(0))
    lsm_sensor.reload(empty_bundle(0))
    shutil.rmtree(inputs, ignore_errors=True)
