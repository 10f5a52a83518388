"""The process cache names a record's relatives from the records seen before it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from stockade.sensor.abi import RecordKind
from stockade.sensor.ecs import document
from stockade.sensor.processes import ProcessCache
from stockade.sensor.records import FileRecord, ProcessRecord

from ..elastic.records import HOST, file_record, process_record


def proc(seq: int, pid: int, ppid: int, start: int, parent_start: int, sid: int, **kw: object
         ) -> ProcessRecord:  # fmt: skip
    rec = process_record(seq)
    header = replace(rec.header, pid=pid, tgid=pid, ppid=ppid)
    return replace(rec, header=header, start_time_ns=start, parent_start_time_ns=parent_start,
                   sid=sid, pgid=pid, **kw)  # type: ignore[arg-type]  # fmt: skip


def run(cache: ProcessCache, rec: ProcessRecord | FileRecord) -> dict[str, Any]:
    doc = document(rec, None, "kill", HOST)
    cache.enrich(doc, rec)
    return doc


def test_relatives_and_the_process_of_a_file_event_come_from_earlier_records() -> None:
    cache = ProcessCache()
    shell = run(cache, proc(1, 100, 1, 5_000, 1, sid=100, executable="/bin/sh", args=["sh"]))
    child = run(cache, proc(2, 200, 100, 9_000, 5_000, sid=100, executable="/w/tiny"))
    p = child["process"]
    assert p["parent"]["entity_id"] == shell["process"]["entity_id"]
    assert p["parent"]["executable"] == "/bin/sh" and p["parent"]["args"] == ["sh"]
    assert p["session_leader"]["entity_id"] == shell["process"]["entity_id"]
    assert p["session_leader"]["same_as_process"] is False
    assert p["group_leader"]["same_as_process"] is True
    assert p["group_leader"]["executable"] == "/w/tiny"
    f = file_record(3)
    f = replace(f, header=replace(f.header, pid=200, tgid=200, ppid=100))
    fp = run(cache, f)["process"]
    assert fp["entity_id"] == p["entity_id"] and fp["executable"] == "/w/tiny"
    assert fp["parent"]["executable"] == "/bin/sh"
    end = proc(4, 200, 100, 9_000, 5_000, sid=100)
    run(cache, replace(end, header=replace(end.header, kind=RecordKind.EXIT)))
    assert len(cache) == 1  # the exit forgot the child


def test_a_reused_pid_is_not_taken_for_the_parent_and_the_cache_is_bounded() -> None:
    cache = ProcessCache(size=2)
    run(cache, proc(1, 100, 1, 5_000, 1, sid=100, executable="/bin/sh"))
    orphan = run(cache, proc(2, 200, 100, 9_000, 4_999, sid=200))  # another process 100
    assert set(orphan["process"]["parent"]) == {"pid", "entity_id"}
    run(cache, proc(3, 300, 1, 9_500, 1, sid=300))
    assert len(cache) == 2


HOST_NS, CONTAINER_NS = 4026531840, 4026532999


def moved(rec: ProcessRecord, mntns: int, cgroup_id: int = 77, kind: int = RecordKind.PROCESS
          ) -> ProcessRecord:  # fmt: skip
    return replace(rec, header=replace(rec.header, mntns=mntns, cgroup_id=cgroup_id, kind=kind))


def run_listed(cache: ProcessCache, rec: ProcessRecord | FileRecord) -> dict[str, Any]:
    """As `run`, in a listed container's cgroup (the document names the container)."""
    doc = document(rec, None, "kill", HOST)
    doc["container"] = {"id": "c0ffee42"}
    cache.enrich(doc, rec)
    return doc


def test_the_process_that_enters_a_mount_namespace_leads_its_descendants() -> None:
    cache = ProcessCache()
    run(cache, proc(1, 100, 1, 5_000, 1, sid=100, executable="/bin/sh"))
    # sh forks 200, which unshares its mount namespace and execs: the entry leader
    fork = run(cache, proc(2, 200, 100, 9_000, 5_000, sid=100, executable="/bin/sh"))
    assert "entry_leader" not in fork["process"]  # sh's own entry was never seen
    unshared = proc(3, 200, 100, 9_000, 5_000, sid=100, executable="/usr/bin/env", args=["env"])
    leader = run(cache, moved(unshared, CONTAINER_NS))
    e = leader["process"]["entry_leader"]
    assert e["pid"] == 200 and e["entity_id"] == leader["process"]["entity_id"]
    assert e["executable"] == "/usr/bin/env" and e["args"] == ["env"]
    assert e["same_as_process"] is True and "entry_meta" not in e  # not a listed container
    # its child, forked and exec'd in the same namespace, keeps it; so does the child's file event
    run(cache, moved(proc(4, 300, 200, 9_500, 9_000, sid=100, executable="/usr/bin/env"),
                     CONTAINER_NS))  # fmt: skip
    child = run(cache, moved(proc(5, 300, 200, 9_500, 9_000, sid=100, executable="/w/tiny"),
                             CONTAINER_NS))  # fmt: skip
    ce = child["process"]["entry_leader"]
    assert ce["entity_id"] == e["entity_id"] and ce["executable"] == "/usr/bin/env"
    assert ce["same_as_process"] is False
    f = file_record(6)
    f = replace(f, header=replace(f.header, pid=300, tgid=300, ppid=200, mntns=CONTAINER_NS))
    fe = run(cache, f)["process"]["entry_leader"]
    assert fe["entity_id"] == e["entity_id"] and fe["same_as_process"] is False
    # the leader's exit still names it; the child's too after its parent left
    run(cache, moved(proc(7, 200, 100, 9_000, 5_000, sid=100), CONTAINER_NS, kind=RecordKind.EXIT))
    end = run(cache, moved(proc(8, 300, 200, 9_500, 9_000, sid=100), CONTAINER_NS,
                           kind=RecordKind.EXIT))  # fmt: skip
    assert end["process"]["entry_leader"]["entity_id"] == e["entity_id"]
    assert len(cache) == 1


def test_a_container_init_is_its_containers_entry_leader_and_unknown_parents_give_none() -> None:
    cache = ProcessCache()
    run(cache, proc(1, 100, 1, 5_000, 1, sid=100, executable="/usr/bin/runc"))
    # same mount namespace as its parent, but in a listed container's cgroup
    nginx = proc(2, 200, 100, 9_000, 5_000, sid=200, executable="/bin/nginx")
    init = run_listed(cache, moved(nginx, HOST_NS, cgroup_id=88))
    e = init["process"]["entry_leader"]
    assert e["entity_id"] == init["process"]["entity_id"]
    assert e["entry_meta"] == {"type": "container"} and e["same_as_process"] is True
    # a process whose parent the cache never saw (started before the sensor): no guess
    stranger = run_listed(cache, moved(proc(3, 300, 250, 9_500, 8_000, sid=300), CONTAINER_NS))
    assert "entry_leader" not in stranger["process"]
    child = run_listed(cache, moved(proc(4, 400, 300, 9_900, 9_500, sid=300), CONTAINER_NS))
    assert "entry_leader" not in child["process"]  # nor its children
