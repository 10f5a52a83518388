"""Kill mode on the VM's kernels: the object loads and attaches everywhere lsm mode is tested,
io_uring included (its tracepoint is `io_uring_submit_sqe` before 6.4)."""

from __future__ import annotations

import pytest

from stockade.sensor.kernel import KillSensor, io_uring_tracepoint

pytestmark = [pytest.mark.vm, pytest.mark.kernel]


def test_kill_mode_loads_with_io_uring() -> None:
    point = io_uring_tracepoint()
    assert point is not None, "the VM's kernels have io_uring"
    with KillSensor() as s:
        points = s.attach()
    assert f"tp_btf/{point}" in points
    assert "tp_btf/sys_enter" in points and "syscalls/openat" in points
