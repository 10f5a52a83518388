"""Enforcement-mode probe on this machine (BPF LSM and fmod_ret refused, tracepoints work)."""

from __future__ import annotations

import pytest

from stockade.sensor.probe import Mode, probe_mode

pytestmark = pytest.mark.kernel


def test_probe_says_kill_here() -> None:
    res = probe_mode()
    assert res.mode is Mode.KILL, res.reason
    assert res.kill_error is None
    # bpf is listed in the LSM stack here, but loading the LSM program is refused
    assert res.lsm_listed
    assert res.lsm_error is not None and "Operation not permitted" in res.lsm_error
    # trampolines are refused too (lockdown): no fmodret mode either, and the reason says so
    assert res.fmodret_error is not None and "Operation not permitted" in res.fmodret_error
    assert f"fmod_ret unavailable ({res.fmodret_error})" in res.reason
