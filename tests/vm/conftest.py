"""Fixtures for the deny-mode tests (lsm, fmodret): they run only inside the test VM
(`e2e/vm/run`, which sets STOCKADE_VM=1), whose kernel allows BPF LSM programs and BPF
trampolines. Each test runs once per mode, with that mode's sensor: `lsm` only where bpf is in
the active LSM list (`e2e/vm/run --lsm` boots without it). tests/kernel's cgroup, workdir and
tiny fixtures and its standalone harness are reused."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.sensor.kernel import FmodretSensor, LsmSensor
from stockade.sensor.probe import bpf_lsm_active

from ..kernel.conftest import cgroup, empty_bundle, tiny, workdir
from ..kernel.scenario import Harness

__all__ = ["cgroup", "tiny", "workdir"]

IN_VM = os.environ.get("STOCKADE_VM") == "1"
# the modes that deny before the operation, and their sensors
MODES: dict[str, type[LsmSensor]] = {"lsm": LsmSensor, "fmodret": FmodretSensor}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: runs only inside the test VM (e2e/vm/run)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Outside the VM (STOCKADE_VM unset) the vm tests are skipped."""
    for item in items:
        if "vm" in item.keywords and not IN_VM:
            item.add_marker(pytest.mark.skip(reason="runs inside the test VM: e2e/vm/run"))


@pytest.fixture(scope="session", params=MODES)
def deny_sensor(request: pytest.FixtureRequest) -> Iterator[LsmSensor]:
    """The mode's sensor, attached (one mode at a time: pytest tears it down before the
    next mode's)."""
    if request.param == "lsm" and not bpf_lsm_active():
        pytest.skip("bpf is not in this kernel's active LSM list")
    s = MODES[request.param]()
    s.attach()
    yield s
    s.close()


@pytest.fixture
def harness(deny_sensor: LsmSensor, workdir: Path) -> Iterator[Harness]:
    inputs = Path(tempfile.mkdtemp(prefix="stk-in-", dir="/var/tmp"))
    h = Harness(deny_sensor, inputs)
    yield h
    h.close()
    deny_sensor.reload(empty_bundle(0))
    deny_sensor.reload(empty_bundle(0))
    shutil.rmtree(inputs, ignore_errors=True)
