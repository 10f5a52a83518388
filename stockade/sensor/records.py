"""Decode the ring-buffer records written by bpf/stockade.bpf.c (layouts in bpf/stockade.h)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "ACTION_ALERT",
    "ACTION_AUDIT_BLOCK",
    "ACTION_BLOCK",
    "ACTION_LOG",
    "HOOKS",
    "KIND_EXIT",
    "KIND_FILE",
    "KIND_PROCESS",
    "OPS",
    "OUTCOMES",
    "RECORD_VERSION",
    "VOLUMES",
    "FileRecord",
    "Header",
    "ProcessRecord",
    "decode",
]

RECORD_VERSION = 1
KIND_PROCESS, KIND_FILE, KIND_EXIT = 1, 2, 3
ACTION_LOG, ACTION_ALERT, ACTION_BLOCK, ACTION_AUDIT_BLOCK = 1, 2, 4, 8
OPS: tuple[str, ...] = (
    "fork",
    "exec",
    "createExecutable",
    "modifyExecutable",
    "createFile",
    "modifyFile",
    "deleteFile",
)
OUTCOMES: tuple[str, ...] = ("allowed", "killed", "kill_failed", "denied")
VOLUMES: tuple[str, ...] = ("none", "mount", "file")
# enum stk_hook: what each hook id is (process tracepoints, the file syscall, or the LSM hook)
HOOKS: dict[int, str] = {
    1: "sched_process_exec", 2: "sched_process_fork", 3: "sched_process_exit",
    10: "open", 11: "openat", 12: "openat2", 13: "creat", 20: "unlink", 21: "unlinkat",
    30: "rename", 31: "renameat", 32: "renameat2", 40: "link", 41: "linkat", 50: "chmod",
    51: "fchmod", 52: "fchmodat", 53: "fchmodat2", 60: "truncate", 61: "ftruncate",
    70: "mknod", 71: "mknodat",
    # lsm mode
    100: "bprm_check_security", 101: "task_alloc", 110: "file_open", 111: "path_mknod",
    112: "path_unlink", 113: "path_rename", 114: "path_link", 115: "path_chmod",
    116: "path_truncate",
}  # fmt: skip

_HDR = struct.Struct("<HHHBBIIQQQIIIIII128s")  # 192 bytes
_PROC = struct.Struct("<QQIIIII4B16sHHHH")  # 64 bytes
_FILE = struct.Struct("<IIIIBBHI16s")  # 40 bytes
assert _HDR.size == 192 and _PROC.size == 64 and _FILE.size == 40


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


def decode(raw: bytes) -> ProcessRecord | FileRecord:
    """Decode one record; raises ValueError on an unknown version or kind."""
    f = _HDR.unpack_from(raw, 0)
    if f[0] != RECORD_VERSION:
        raise ValueError(f"record version {f[0]}, want {RECORD_VERSION}")
    hdr = Header(
        version=f[0], kind=f[1], hook=f[2], outcome=OUTCOMES[f[3]] if f[3] < 4 else str(f[3]),
        slot=f[4], size=f[5], actions=f[6], ktime_ns=f[7], cgroup_id=f[8], generation=f[9],
        mntns=f[10], pid=f[11], tgid=f[12], ppid=f[13], uid=f[14], gid=f[15],
        matched=int.from_bytes(f[16], "little"),
    )  # fmt: skip
    off = _HDR.size
    if hdr.kind in (KIND_PROCESS, KIND_EXIT):
        p = _PROC.unpack_from(raw, off)
        data = raw[off + _PROC.size :]
        exe_len, cwd_len, args_len = p[12], p[13], p[14]
        exe = data[:exe_len]
        cwd = data[exe_len : exe_len + cwd_len]
        args = data[exe_len + cwd_len : exe_len + cwd_len + args_len]
        return ProcessRecord(
            header=hdr, start_time_ns=p[0], parent_start_time_ns=p[1], sid=p[2], pgid=p[3],
            tty_index=p[4], tty_major=p[5], exit_code=p[6], interactive=bool(p[7]),
            comm=_cstr(p[11]), executable=exe.decode(errors="surrogateescape"),
            cwd=cwd.decode(errors="surrogateescape"),
            args=[a.decode(errors="surrogateescape") for a in args.rstrip(b"\0").split(b"\0")]
            if args else [],
        )  # fmt: skip
    if hdr.kind == KIND_FILE:
        q = _FILE.unpack_from(raw, off)
        path = raw[off + _FILE.size : off + _FILE.size + q[6]]
        return FileRecord(
            header=hdr, ops=frozenset(n for i, n in enumerate(OPS) if q[0] >> i & 1),
            flags=q[1], mode=q[2], fmode=q[3], volume=VOLUMES[q[4]] if q[4] < 3 else str(q[4]),
            path_from_fd=bool(q[5]), comm=_cstr(q[8]),
            path=path.decode(errors="surrogateescape"),
        )  # fmt: skip
    raise ValueError(f"unknown record kind {hdr.kind}")
