"""Decode the ring-buffer records the BPF programs write (layouts: stockade.sensor.abi)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from stockade.sensor.abi import (
    CGROUP_REC,
    FILE_REC,
    PROC_REC,
    REC_HDR,
    Const,
    Op,
    Outcome,
    RecordKind,
    Volume,
)

__all__ = ["CgroupRecord", "FileRecord", "Header", "ProcessRecord", "decode"]


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="surrogateescape")


@dataclass(frozen=True)
class Header:
    """Fields common to every record."""

    version: int
    kind: int
    hook: int
    outcome: str
    slot: int
    size: int
    actions: int
    ktime_ns: int
    cgroup_id: int
    generation: int
    mntns: int
    pid: int
    tgid: int
    ppid: int
    uid: int
    gid: int
    matched: int  # selector bit i set when selector i matched


@dataclass(frozen=True)
class ProcessRecord:
    """exec / fork (kind 1) or exit (kind 3) of a process."""

    header: Header
    start_time_ns: int
    parent_start_time_ns: int
    sid: int
    pgid: int
    tty_index: int
    tty_major: int
    exit_code: int
    interactive: bool
    comm: str
    executable: str
    cwd: str
    args: list[str]
    executable_truncated: bool = False  # the tail of a path too long to resolve (fail closed)
    executable_fileless: bool = False  # in no directory: a memfd, or a deleted file


@dataclass(frozen=True)
class FileRecord:
    """A file operation (kind 2)."""

    header: Header
    ops: frozenset[str]
    flags: int
    mode: int
    fmode: int
    volume: str
    path_from_fd: bool
    comm: str
    path: str
    path_truncated: bool = False  # the tail of a path too long to resolve (fail closed)
    other_name: bool = False  # path is another name (hard link) of the file operated on
    names_unknown: bool = False  # the file has names the kernel had not cached (fail closed)
    path_swapped: bool = False  # the path string changed during the syscall (both decided)


@dataclass(frozen=True)
class CgroupRecord:
    """A cgroup v2 directory made or removed (kind 4), at most `Const.CGROUP_MAX_LEVEL` deep:
    a container's cgroup known before its first exec. No `Header`: it names no process."""

    created: bool  # False: removed
    cgroup_id: int  # the directory's inode: what the other records' `cgroup_id` holds
    level: int  # below the v2 root: /a is 1
    path: str  # relative to the v2 root's mount, "/kubepods.slice/…"
    path_truncated: bool  # the first Const.CGROUP_PATH bytes of a longer path
    ktime_ns: int  # as the other records' header.ktime_ns


_OUTCOMES = {int(o): o.name.lower() for o in Outcome}  # dicts: enum calls cost µs per record
_VOLUMES = {int(v): v.name.lower() for v in Volume}


def _name(names: dict[int, str], value: int) -> str:
    """An enum's value as its lowercase name (the number as text when unknown)."""
    return names.get(value) or str(value)


@lru_cache(maxsize=256)
def _ops(bits: int) -> frozenset[str]:
    return frozenset(op.operation for op in Op if bits >> op & 1)


def decode(raw: bytes) -> ProcessRecord | FileRecord | CgroupRecord:
    """Decode one record; raises ValueError on an unknown version or kind."""
    version = REC_HDR.member(raw, "version")
    if version != Const.RECORD_VERSION:
        raise ValueError(f"record version {version}, want {int(Const.RECORD_VERSION)}")
    if REC_HDR.member(raw, "kind") == RecordKind.CGROUP:
        c = CGROUP_REC.unpack_fields(raw)
        path = raw[CGROUP_REC.size : CGROUP_REC.size + c["path_len"]]
        return CgroupRecord(
            created=bool(c["created"]), cgroup_id=c["cgroup_id"], level=c["level"],
            path=path.decode(errors="surrogateescape"),
            path_truncated=bool(c["path_truncated"]), ktime_ns=c["ktime_ns"],
        )  # fmt: skip
    f = REC_HDR.unpack_fields(raw)
    hdr = Header(
        **{**f, "outcome": _name(_OUTCOMES, f["outcome"]),
           "matched": int.from_bytes(f["matched"], "little")}
    )  # fmt: skip
    if hdr.kind in (RecordKind.PROCESS, RecordKind.EXIT):
        p = PROC_REC.unpack_fields(raw)
        data = raw[PROC_REC.size :]
        exe_len, cwd_len, args_len = p["exe_len"], p["cwd_len"], p["args_len"]
        exe = data[:exe_len]
        cwd = data[exe_len : exe_len + cwd_len]
        args = data[exe_len + cwd_len : exe_len + cwd_len + args_len]
        return ProcessRecord(
            header=hdr, start_time_ns=p["start_time_ns"],
            parent_start_time_ns=p["parent_start_time_ns"], sid=p["sid"], pgid=p["pgid"],
            tty_index=p["tty_index"], tty_major=p["tty_major"], exit_code=p["exit_code"],
            interactive=bool(p["interactive"]), comm=_cstr(p["comm"]),
            executable=exe.decode(errors="surrogateescape"),
            executable_truncated=bool(p["exe_truncated"]),
            executable_fileless=bool(p["exe_fileless"]),
            cwd=cwd.decode(errors="surrogateescape"),
            args=[a.decode(errors="surrogateescape") for a in args.rstrip(b"\0").split(b"\0")]
            if args else [],
        )  # fmt: skip
    if hdr.kind == RecordKind.FILE:
        q = FILE_REC.unpack_fields(raw)
        path = raw[FILE_REC.size : FILE_REC.size + q["path_len"]]
        return FileRecord(
            header=hdr, ops=_ops(q["ops"]),
            flags=q["flags"], mode=q["mode"], fmode=q["fmode"],
            volume=_name(_VOLUMES, q["volume"]), path_from_fd=bool(q["path_from_fd"]),
            comm=_cstr(q["comm"]), path=path.decode(errors="surrogateescape"),
            path_truncated=bool(q["path_truncated"]), other_name=bool(q["other_name"]),
            names_unknown=bool(q["names_unknown"]), path_swapped=bool(q["path_swapped"]),
        )  # fmt: skip
    raise ValueError(f"unknown record kind {hdr.kind}")
