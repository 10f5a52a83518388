"""What the sensor has seen of each process, to name a record's relatives.

A record carries its own process's facts, its parent's pid and start time, and its
session and process-group leaders' pids. The cache, fed by every process record (fork,
exec, exit) the sensor writes, adds what it knows of those relatives — and, on file
events, of the process itself, whose record carries no start time or executable — so a
file alert can be tied to the exec that started it. It is bounded (least recently seen
first out) and never reads `/proc`: `/proc` gives start times in clock ticks of boot
time, not the kernel's monotonic `task->start_time` that entity ids hash, so what it
would add could not be matched. A relative the cache never saw keeps only what the
record says.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from stockade.sensor.abi import RecordKind
from stockade.sensor.records import FileRecord, ProcessRecord

__all__ = ["ProcessCache"]

Document = dict[str, Any]
_RELATIVE_FIELDS = ("entity_id", "executable", "name", "args", "start", "interactive",
                    "working_directory", "user", "group")  # fmt: skip


class ProcessCache:
    def __init__(self, size: int = 32_768) -> None:
        self.size = size
        self._by_pid: OrderedDict[int, Document] = OrderedDict()  # tgid → its process object

    def __len__(self) -> int:
        return len(self._by_pid)

    def _get(self, pid: int, entity_id: str | None = None) -> Document | None:
        known = self._by_pid.get(pid)
        if known is None or (entity_id is not None and known.get("entity_id") != entity_id):
            return None
        return known

    def enrich(self, doc: Document, rec: ProcessRecord | FileRecord) -> None:
        """Add what is known of the record's process and its relatives; learn from it."""
        proc = doc["process"]
        if isinstance(rec, FileRecord):
            known = self._get(rec.header.tgid)
            if known is not None:
                for key in ("entity_id", "executable", "start", "args", "working_directory"):
                    if key in known and key not in proc:
                        proc[key] = known[key]
        parent = self._get(rec.header.ppid, proc["parent"].get("entity_id"))
        if parent is not None:
            self._fill(proc["parent"], parent)
        for leader in ("session_leader", "group_leader"):
            if leader not in proc:
                continue
            pid = proc[leader]["pid"]
            if pid == proc["pid"]:
                self._fill(proc[leader], proc)
                proc[leader]["same_as_process"] = True
            elif (known := self._get(pid)) is not None:
                self._fill(proc[leader], known)
                proc[leader]["same_as_process"] = False
        if isinstance(rec, ProcessRecord):
            self._learn(rec, proc)

    @staticmethod
    def _fill(into: Document, known: Document) -> None:
        for key in _RELATIVE_FIELDS:
            if key in known and key not in into:
                into[key] = known[key]

    def _learn(self, rec: ProcessRecord, proc: Document) -> None:
        pid = rec.header.tgid
        if rec.header.kind == RecordKind.EXIT:
            self._by_pid.pop(pid, None)
            return
        self._by_pid[pid] = {key: proc[key] for key in _RELATIVE_FIELDS if key in proc}
        self._by_pid.move_to_end(pid)
        while len(self._by_pid) > self.size:
            self._by_pid.popitem(last=False)
