"""cgroup records in the real kernel: a cgroup v2 directory made or removed is reported with
its id, level and path, before anything runs in it (docs/kernel.md, "cgroup records")."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from stockade.sensor.abi import ActionBits, Const
from stockade.sensor.kernel import Bundle, KillSensor
from stockade.sensor.records import CgroupRecord, ProcessRecord

from .conftest import CGROUP2, Cgroup, Collector, part_tables
from .test_attacks import build_c

pytestmark = pytest.mark.kernel

Load = Callable[[Bundle], int]
POD_UID = "2f1c6b9e_1d4a_4c2e_9a57_0b8f3e6d7c11"
CONTAINER = "cri-containerd-" + "0123456789abcdef" * 4 + ".scope"
KUBEPODS = (
    "kubepods.slice",
    "kubepods-burstable.slice",
    f"kubepods-burstable-pod{POD_UID}.slice",
    CONTAINER,
)


def v2_path(directory: Path) -> str:
    """A directory's path as the tracepoint gives it: from the v2 hierarchy's root."""
    return "/" + str(directory.relative_to(CGROUP2))


def made(collector: Collector, under: Path) -> list[CgroupRecord]:
    """The cgroup records written since the last call for directories at or below `under`
    (other cgroups of the machine come and go meanwhile)."""
    collector.drain()
    got, collector.cgroups = collector.cgroups, []
    top = v2_path(under)
    return [c for c in got if c.path == top or c.path.startswith(top + "/")]


def nest(base: Path, names: tuple[str, ...] | list[str]) -> list[Path]:
    """base/names[0]/names[1]/... made one by one; returns each directory."""
    out, d = [], base
    for name in names:
        d = d / name
        d.mkdir()
        out.append(d)
    return out


def test_a_pod_containers_cgroup_is_reported_when_made_and_removed(
    collector: Collector, cgroup: Cgroup
) -> None:
    made_and_removed(collector, cgroup)


def made_and_removed(collector: Collector, cgroup: Cgroup) -> None:
    """kubelet's systemd layout made level by level: one `created` record per directory, with
    the directory's inode as cgroup id, its level and its path; rmdir: `removed`, the same.
    (tests/vm runs it in lsm mode.)"""
    made(collector, cgroup.path)  # the fixture's own directory
    dirs = nest(cgroup.path, KUBEPODS)
    want = [(v2_path(d), os.stat(d).st_ino, v2_path(d).count("/")) for d in dirs]
    assert want[-1][0].endswith(f"-pod{POD_UID}.slice/{CONTAINER}")
    got = made(collector, cgroup.path)
    assert [(c.created, c.path, c.cgroup_id, c.level, c.path_truncated) for c in got] == [
        (True, path, cgid, level, False) for path, cgid, level in want
    ]
    for d in reversed(dirs):
        d.rmdir()
    got = made(collector, cgroup.path)
    assert [(c.created, c.path, c.cgroup_id, c.level) for c in got] == [
        (False, path, cgid, level) for path, cgid, level in reversed(want)
    ]


def test_the_created_record_comes_before_the_first_exec_and_names_its_cgroup(
    collector: Collector, cgroup: Cgroup, tiny: Path, load: Load
) -> None:
    """The id in the record is the one the exec's own record carries (the kernel's
    bpf_get_current_cgroup_id), and the record is written before the exec happens."""
    made(collector, cgroup.path)  # the fixture's own directory
    container = Cgroup(nest(cgroup.path, KUBEPODS)[-1])
    tables = part_tables("process", {"exec": 1}, [(1, 0, ActionBits.LOG)], any_path=1, any_name=1)
    load(Bundle(1, {container.id: {"process": 1}}, {"process": tables}))
    res, recs = collector.run([str(tiny)], container)
    assert res.returncode == 0
    execs = [r for r in recs if isinstance(r, ProcessRecord) and r.executable == str(tiny)]
    created = [c for c in made(collector, container.path) if c.created]
    assert len(execs) >= 1 and len(created) == 1
    assert created[0].cgroup_id == execs[0].header.cgroup_id == container.id
    assert created[0].ktime_ns < execs[0].header.ktime_ns


def test_a_path_longer_than_the_record_holds_is_truncated_and_says_so(
    sensor: KillSensor, collector: Collector, cgroup: Cgroup
) -> None:
    """Paths of exactly Const.CGROUP_PATH bytes arrive whole; one byte more: the first
    CGROUP_PATH bytes, flagged (and counted in path_truncated)."""
    made(collector, cgroup.path)  # the fixture's own directory
    top = v2_path(cgroup.path)
    first = "a" * 250
    rest = Const.CGROUP_PATH - len(top) - 2 - len(first)  # top + "/" + first + "/" + last
    assert 0 < rest < 255
    before = sensor.stats()["path_truncated"]
    exact = nest(cgroup.path, [first, "b" * rest])[-1]
    longer = nest(cgroup.path / first, ["c" * (rest + 1)])[-1]
    assert (len(v2_path(exact)), len(v2_path(longer))) == (Const.CGROUP_PATH, Const.CGROUP_PATH + 1)
    got = {c.cgroup_id: (c.path, c.path_truncated) for c in made(collector, cgroup.path)}
    assert got[os.stat(exact).st_ino] == (v2_path(exact), False)
    assert got[os.stat(longer).st_ino] == (v2_path(longer)[: Const.CGROUP_PATH], True)
    assert sensor.stats()["path_truncated"] > before


def test_cgroups_deeper_than_the_bound_get_no_record(collector: Collector, cgroup: Cgroup) -> None:
    """Levels 1..CGROUP_MAX_LEVEL are reported, deeper ones neither made nor removed: they are
    decided through their listed ancestor, and a delegated cgroup can't flood the ring."""
    made(collector, cgroup.path)  # the fixture's own directory
    dirs = nest(cgroup.path, [f"l{level}" for level in range(2, Const.CGROUP_MAX_LEVEL + 3)])
    for d in reversed(dirs):
        d.rmdir()
    got = made(collector, cgroup.path)
    reported = range(2, Const.CGROUP_MAX_LEVEL + 1)
    assert [(c.created, c.level) for c in got] == [(True, lv) for lv in reported] + [
        (False, lv) for lv in reversed(reported)
    ]


def test_cgroup_records_survive_an_exec_flood(
    own_sensor: KillSensor, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    """With nobody reading, an exec flood fills the events ring buffer; cgroup directories
    made after it are all reported (their own ring buffer), and none is counted lost."""
    sensor = own_sensor
    flood = build_c(workdir, "flood")
    tables = part_tables("process", {"exec": 1}, [(1, 0, ActionBits.LOG)], any_path=1, any_name=1)
    sensor.reload(Bundle(1, {cgroup.id: {"process": 1}}, {"process": tables}))
    collector = Collector(sensor)
    made(collector, cgroup.path)  # the fixture's own directory
    before = sensor.stats()
    n = 20_000
    res = subprocess.run(
        [str(flood), str(n), str(n + 1), str(tiny), str(tiny)],
        preexec_fn=cgroup.join(),
        check=False,
    )
    assert res.returncode == 0
    dirs = [cgroup.path / "pods", *(cgroup.path / "pods" / f"c{i}" for i in range(50))]
    for d in dirs:
        d.mkdir()
    lost = sensor.stats()["lost_log"] - before["lost_log"]
    assert lost > 0, "the flood did not fill the ring"
    got = made(collector, cgroup.path)
    collector.close()
    print(f"flood: {lost} log records lost, {len(got)} cgroup records for {len(dirs)} made after")
    assert {c.cgroup_id for c in got if c.created} >= {os.stat(d).st_ino for d in dirs}
    assert sensor.stats()["cgroup_fail"] == before["cgroup_fail"]
