"""The ctypes libbpf binding against the real kernel."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from stockade.sensor.kernel import KillSensor
from stockade.sensor.libbpf import BpfError, BpfObject, num_possible_cpus, obj_get
from stockade.sensor.paths import object_path

pytestmark = pytest.mark.kernel


def test_open_missing_object_raises_with_errno() -> None:
    with pytest.raises(BpfError) as exc:
        BpfObject("/nonexistent/x.bpf.o")
    assert exc.value.errno == errno.ENOENT
    assert "No such file" in str(exc.value)


def test_unknown_program_and_map() -> None:
    with BpfObject(object_path("probe.bpf.o")) as obj:
        with pytest.raises(BpfError):
            obj.program("nope")
        with pytest.raises(BpfError):
            obj.map("nope")


def test_map_ops(sensor: KillSensor) -> None:
    m = sensor.maps["names"]
    key = struct.pack("<I", 1) + b"stk-test".ljust(16, b"\0")
    val = (5).to_bytes(128, "little")
    assert m.lookup(key) is None
    m.update(key, val)
    assert m.lookup(key) == val
    assert key in list(m.keys())
    assert m.delete(key) is True
    assert m.delete(key) is False
    with pytest.raises(ValueError):
        m.lookup(b"short")


def test_batch_update(sensor: KillSensor) -> None:
    m = sensor.maps["names"]
    items = [
        (struct.pack("<I", 1) + f"stk-b{i}".encode().ljust(16, b"\0"), i.to_bytes(128, "little"))
        for i in range(10)
    ]
    m.update_batch(items)
    try:
        for k, v in items:
            assert m.lookup(k) == v
    finally:
        for k, _ in items:
            m.delete(k)


def test_percpu_lookup(sensor: KillSensor) -> None:
    vals = sensor.maps["stats"].lookup_percpu(struct.pack("<I", 0))
    assert len(vals) == num_possible_cpus()
    assert all(len(v) == 8 for v in vals)


def test_pin_and_obj_get(sensor: KillSensor) -> None:
    path = f"/sys/fs/bpf/stk-test-names-{os.getpid()}"
    m = sensor.maps["names"]
    m.pin(path)
    try:
        fd = obj_get(path)
        assert fd >= 0
        os.close(fd)
    finally:
        m.unpin(path)
    assert not os.path.exists(path)


def test_update_wrong_value_size(sensor: KillSensor) -> None:
    with pytest.raises(ValueError):
        sensor.maps["names"].update(b"\0" * 20, b"\0" * 3)
