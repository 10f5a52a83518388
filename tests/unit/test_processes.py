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
