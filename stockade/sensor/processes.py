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

The entry leader is the process that entered the container or namespace the process
runs in: a container's init, or what `kubectl exec` / `docker exec` / `unshare -m`
started. A process whose parent the cache knows is one when that parent is in another
mount namespace, or in another cgroup while the process is in a listed container's;
otherwise it inherits its parent's. Exec and exit keep what the process had while it
stays where it was. A process whose parent was never seen gets none: it is not guessed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from stockade.sensor.abi import RecordKind
from stockade.sensor.records import FileRecord, ProcessRecord

__all__ = ["ProcessCache"]

Document = dict[str, Any]
_RELATIVE_FIELDS = ("entity_id", "executable", "name", "args", "start", "interactive",
                    "working_directory", "user", "group")  # fmt: skip


@dataclass(slots=True)
class _Seen:
    facts: Document  # its process object's `_RELATIVE_FIELDS`
    mntns: int
    cgroup_id: int
    entry: Document | None  # its entry leader's facts (one dict shared by its descendants)


class ProcessCache:
    def __init__(self, size: int = 32_768) -> None:
        self.size = size
        self._by_pid: OrderedDict[int, _Seen] = OrderedDict()  # tgid → what it was last

    def __len__(self) -> int:
        return len(self._by_pid)

    def _get(self, pid: int, entity_id: str | None = None) -> _Seen | None:
        known = self._by_pid.get(pid)
        if known is None or (entity_id is not None and known.facts.get("entity_id") != entity_id):
            return None
        return known

    def enrich(self, doc: Document, rec: ProcessRecord | FileRecord) -> None:
        """Add what is known of the record's process and its relatives; learn from it."""
        proc = doc["process"]
        me = self._get(rec.header.tgid, proc.get("entity_id"))
        if isinstance(rec, FileRecord) and me is not None:
            for key in ("entity_id", "executable", "start", "args", "working_directory"):
                if key in me.facts and key not in proc:
                    proc[key] = me.facts[key]
        parent = self._get(rec.header.ppid, proc["parent"].get("entity_id"))
        if parent is not None:
            self._fill(proc["parent"], parent.facts)
        for leader in ("session_leader", "group_leader"):
            if leader not in proc:
                continue
            pid = proc[leader]["pid"]
            if pid == proc["pid"]:
                self._fill(proc[leader], proc)
                proc[leader]["same_as_process"] = True
            elif (known := self._get(pid)) is not None:
                self._fill(proc[leader], known.facts)
                proc[leader]["same_as_process"] = False
        if isinstance(rec, FileRecord):
            entry = me.entry if me is not None else None
        else:
            entry = self._entry(rec, doc, me, parent)
            self._learn(rec, proc, entry)
        if entry is not None:
            same = entry["entity_id"] == proc.get("entity_id")
            proc["entry_leader"] = {**entry, "same_as_process": same}

    @staticmethod
    def _fill(into: Document, known: Document) -> None:
        for key in _RELATIVE_FIELDS:
            if key in known and key not in into:
                into[key] = known[key]

    @staticmethod
    def _entry(
        rec: ProcessRecord, doc: Document, me: _Seen | None, parent: _Seen | None
    ) -> Document | None:
        """The entry leader of a fork, exec or exit record's process (module docstring)."""
        h, proc = rec.header, doc["process"]
        listed = "container" in doc
        if me is not None and (me.mntns, me.cgroup_id) == (h.mntns, h.cgroup_id):
            leads = me.entry is not None and me.entry["entity_id"] == proc["entity_id"]
            if not leads or h.kind == RecordKind.EXIT:
                return me.entry
            # the leader itself exec'd: its facts now (its children keep what they had)
        elif parent is None:
            return None
        elif parent.mntns == h.mntns and (parent.cgroup_id == h.cgroup_id or not listed):
            return parent.entry
        entry = {"pid": proc["pid"], **{k: proc[k] for k in _RELATIVE_FIELDS if k in proc}}
        if listed:
            entry["entry_meta"] = {"type": "container"}
        return entry

    def _learn(self, rec: ProcessRecord, proc: Document, entry: Document | None) -> None:
        h = rec.header
        if h.kind == RecordKind.EXIT:
            self._by_pid.pop(h.tgid, None)
            return
        facts = {key: proc[key] for key in _RELATIVE_FIELDS if key in proc}
        self._by_pid[h.tgid] = _Seen(facts, h.mntns, h.cgroup_id, entry)
        self._by_pid.move_to_end(h.tgid)
        while len(self._by_pid) > self.size:
            self._by_pid.popitem(last=False)
