"""Synthetic ring-buffer records and their documents, for tests that need many of them."""

from __future__ import annotations

from typing import Any

from stockade.sensor.abi import ActionBits, Hook, RecordKind
from stockade.sensor.ecs import Host, document
from stockade.sensor.records import FileRecord, Header, ProcessRecord

HOST = Host(
    "node-1", "m" * 32, "b" * 36, "x86_64", "6.1.0", 1_700_000_000 * 10**9,
    os_release={"name": "Debian GNU/Linux", "version": "12 (bookworm)", "family": "debian"},
    ips=("192.0.2.2", "fd00::2"), macs=("02-FC-00-00-00-01",), pid_ns_ino=4026531836,
)  # fmt: skip


def header(seq: int, kind: int, hook: int, actions: int, pid: int = 4242) -> Header:
    return Header(
        version=1, kind=kind, hook=hook, outcome="allowed", slot=0, size=0, actions=actions,
        ktime_ns=10**12 + seq * 1000, cgroup_id=77, generation=1, mntns=4026531840, pid=pid,
        tgid=pid, ppid=1, uid=0, gid=0, matched=0,
    )  # fmt: skip


def process_record(
    seq: int, alert: bool = False, kind: RecordKind = RecordKind.PROCESS
) -> ProcessRecord:
    actions = ActionBits.ALERT if alert else ActionBits.LOG
    hook = Hook.EXIT if kind == RecordKind.EXIT else Hook.EXEC
    return ProcessRecord(
        header=header(seq, kind, hook, int(actions)), start_time_ns=10**11, parent_start_time_ns=1,
        sid=1, pgid=4242, tty_index=1, tty_major=136, exit_code=256, interactive=True,
        comm="tiny", executable="/w/bin/tiny", cwd="/w", args=["/w/bin/tiny", str(seq)],
    )  # fmt: skip


def file_record(seq: int, alert: bool = False) -> FileRecord:
    actions = ActionBits.ALERT if alert else ActionBits.LOG
    return FileRecord(
        header=header(seq, RecordKind.FILE, Hook.OPENAT, int(actions)),
        ops=frozenset({"createFile"}),
        flags=0o101, mode=0o100644, fmode=0, volume="none", path_from_fd=False, comm="tiny",
        path=f"/w/sub/f{seq}.txt",
    )  # fmt: skip


def docs(n: int, alert: bool = False, start: int = 0) -> list[dict[str, Any]]:
    """n exec documents (alerts when asked), distinct `event.id`s from `start`."""
    return [document(process_record(start + i, alert), None, "kill", HOST) for i in range(n)]
