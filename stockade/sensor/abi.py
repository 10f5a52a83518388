"""The kernel ABI on the Python side: bpf/lib/abi.h's enums and layouts, each once.

Every enum here mirrors the C enum named in `C_ENUMS` member by member (`Op.EXEC` is
`STK_OP_EXEC`; a C enumerator `*_COUNT` is a bound, not a member), and every `Layout` the
C struct it names, field by field (explicit padding included). tests/unit/test_abi.py
compares both with the BTF of the built objects, so a change made on one side only fails
there. See docs/kernel.md, "The kernel ABI".
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping
from enum import IntEnum, IntFlag
from typing import Any, Final

__all__ = [
    "CGROUP_KEY",
    "CGROUP_REC",
    "CGROUP_VAL",
    "CONTROL",
    "C_ENUMS",
    "FILE_REC",
    "HEAD_KEY",
    "LAYOUTS",
    "LONG_KEY",
    "LPM_KEY",
    "MASK",
    "NAME_KEY",
    "OPERATIONS",
    "PART_MASKS",
    "PATH_KEY",
    "POD_CGROUP_KEY",
    "PROBE_STATE",
    "PROC_REC",
    "REC_HDR",
    "RESPONSE",
    "SYSCALL_HOOKS",
    "ActionBits",
    "Const",
    "Hook",
    "Layout",
    "Op",
    "Outcome",
    "Part",
    "PathTable",
    "RecordKind",
    "Stat",
    "Volume",
]


class Const(IntEnum):
    """enum stk_const: sizes and limits both sides build on."""

    RECORD_VERSION = 3
    MASK_WORDS = 16  # u64 words per selector mask: 1024 selectors per part
    PATH_KEY = 256
    LPM_PATH = 255
    LONG_PATH = 511  # path bytes in a stk_long_paths key: longer table entries
    HEAD_BYTES = 11
    OP_SLOTS = 8  # stk_op_masks index = slot * OP_SLOTS + op
    MAX_RESPONSES = 1024  # response rows per slot and part
    CGROUP_PATH = 512  # path bytes in a cgroup record at most (longer: truncated)
    CGROUP_MAX_LEVEL = 8  # cgroups deeper than this get no cgroup record
    POD_CGROUP_NAME = 68  # name bytes in a stk_pod_cgroup_key (the longest is 65)


class Part(IntEnum):
    """enum stk_part: a bundle's two parts; `name.lower()` is the bundle's part name."""

    PROCESS = 0
    FILE = 1


class Op(IntEnum):
    """enum stk_op: an operation's bit in op masks and in file records' `ops`."""

    FORK = 0
    EXEC = 1
    CREATE_EXECUTABLE = 2
    MODIFY_EXECUTABLE = 3
    CREATE_FILE = 4
    MODIFY_FILE = 5
    DELETE_FILE = 6

    @property
    def operation(self) -> str:
        """The policy language's name, the member's in camelCase (CREATE_FILE: createFile;
        tests/unit/test_abi.py checks them against `model.ProcessOperation`/`FileOperation`)."""
        first, *rest = self.name.lower().split("_")
        return first + "".join(word.capitalize() for word in rest)


OPERATIONS: Final[Mapping[str, Op]] = {op.operation: op for op in Op}


class ActionBits(IntFlag):
    """enum stk_action: a response row's actions and a record's."""

    LOG = 1
    ALERT = 2
    BLOCK = 4
    AUDIT_BLOCK = 8  # audit mode: the block the policy asks for is reported, not done


class Outcome(IntEnum):
    """enum stk_outcome: what enforcement did; `name.lower()` is the ECS outcome."""

    ALLOWED = 0
    KILLED = 1
    KILL_FAILED = 2
    DENIED = 3
    PENDING = 4  # kill mode: acts only if the file has an x bit, which user space reads


class Volume(IntEnum):
    """enum stk_volume: where a file is (`name.lower()`: none, mount, file)."""

    NONE = 0
    MOUNT = 1
    FILE = 2


class RecordKind(IntEnum):
    """enum stk_kind."""

    PROCESS = 1
    FILE = 2
    EXIT = 3
    CGROUP = 4  # a cgroup v2 directory made or removed (stk_cgroup_rec, not a stk_rec_hdr)


class Hook(IntEnum):
    """enum stk_hook: what made a record. Kill mode's file-syscall hooks are also the BPF
    cookie of each syscall tracepoint attachment (`SYSCALL_HOOKS`)."""

    EXEC = 1
    FORK = 2
    EXIT = 3
    EXEC_MAPPED = 4  # kill mode: a file's code mapped PROT_EXEC (ld.so PROGRAM)
    OPEN = 10
    OPENAT = 11
    OPENAT2 = 12
    CREAT = 13
    UNLINK = 20
    UNLINKAT = 21
    RENAME = 30
    RENAMEAT = 31
    RENAMEAT2 = 32
    LINK = 40
    LINKAT = 41
    CHMOD = 50
    FCHMOD = 51
    FCHMODAT = 52
    FCHMODAT2 = 53
    TRUNCATE = 60
    FTRUNCATE = 61
    MKNOD = 70
    MKNODAT = 71
    IO_URING_OPENAT = 80  # io_uring requests, decided when submitted
    IO_URING_UNLINKAT = 81
    IO_URING_RENAMEAT = 82
    IO_URING_LINKAT = 83
    LSM_BPRM_CHECK = 100
    LSM_TASK_ALLOC = 101
    LSM_MMAP_FILE = 102  # a file's code mapped PROT_EXEC (ld.so PROGRAM)
    LSM_FILE_OPEN = 110
    LSM_PATH_MKNOD = 111
    LSM_PATH_UNLINK = 112
    LSM_PATH_RENAME = 113
    LSM_PATH_LINK = 114
    LSM_PATH_CHMOD = 115
    LSM_PATH_TRUNCATE = 116
    LSM_FILE_TRUNCATE = 117  # 6.2+: ftruncate, open(O_TRUNC)
    FMODRET_BPRM_CHECK = 120  # fmodret mode: the security_* functions that call the LSM hooks
    FMODRET_TASK_ALLOC = 121
    FMODRET_MMAP_FILE = 122
    FMODRET_FILE_OPEN = 130
    FMODRET_PATH_MKNOD = 131
    FMODRET_PATH_UNLINK = 132
    FMODRET_PATH_RENAME = 133
    FMODRET_PATH_LINK = 134
    FMODRET_PATH_CHMOD = 135
    FMODRET_PATH_TRUNCATE = 136
    FMODRET_FILE_TRUNCATE = 137  # 6.2+

    @property
    def point(self) -> str:
        """The kernel's name for it: a sched tracepoint, a syscall, an LSM hook or (fmodret)
        the security_* function that calls that hook."""
        special = {
            Hook.EXEC: "sched_process_exec",
            Hook.FORK: "sched_process_fork",
            Hook.EXIT: "sched_process_exit",
            Hook.LSM_BPRM_CHECK: "bprm_check_security",
            Hook.FMODRET_BPRM_CHECK: "security_bprm_check",
        }
        if self.name.startswith("FMODRET_"):
            return special.get(self) or "security_" + self.name.removeprefix("FMODRET_").lower()
        return special.get(self) or self.name.removeprefix("LSM_").lower()

    @property
    def hook_point(self) -> str:
        """`cloud_defend.hook_point` in Defend for Containers' form, KIND__NAME:
        `tracepoint__sched_process_exec`, `lsm__path_unlink`; kill mode's syscall hooks
        `tracepoint__openat`; fmodret mode's `fmod_ret__security_path_unlink`."""
        kind = (
            "fmod_ret" if self >= Hook.FMODRET_BPRM_CHECK
            else "lsm" if self >= Hook.LSM_BPRM_CHECK
            else "tracepoint"
        )  # fmt: skip
        return f"{kind}__{self.point}"


SYSCALL_HOOKS: Final = tuple(h for h in Hook if Hook.OPEN <= h <= Hook.MKNODAT)


class Stat(IntEnum):
    """enum stk_stat: the stk_stats counters; `name.lower()` is the name in stats lines."""

    RB_FAIL = 0
    INFLIGHT_FAIL = 1
    PATH_TRUNCATED = 2
    RECORDS = 3
    KILLS = 4
    KILL_FAIL = 5
    DENIALS = 6
    LOST_LOG = 7  # RB_FAIL = LOST_LOG + LOST_ALERT + LOST_EXIT
    LOST_ALERT = 8
    LOST_EXIT = 9
    CGROUP_FAIL = 10  # cgroup records lost (not in RB_FAIL): the cgroups need a rescan
    NAMES_UNKNOWN = 11  # a changed file with more links than names in the dcache
    PATH_SWAPPED = 12  # kill mode: a path string changed between sys_enter and sys_exit


class PathTable(IntFlag):
    """enum stk_table: the path tables as bits (stk_path_heads values)."""

    EXACT = 1
    CHILDREN = 2
    RECURSIVE = 4
    ALL = 7


# Python enum → (C enum, its enumerators' prefix)
C_ENUMS: Final[Mapping[type[IntEnum] | type[IntFlag], tuple[str, str]]] = {
    Const: ("stk_const", "STK_"),
    Part: ("stk_part", "STK_PART_"),
    Op: ("stk_op", "STK_OP_"),
    ActionBits: ("stk_action", "STK_ACTION_"),
    Outcome: ("stk_outcome", "STK_OUTCOME_"),
    Volume: ("stk_volume", "STK_VOLUME_"),
    RecordKind: ("stk_kind", "STK_KIND_"),
    Hook: ("stk_hook", "STK_HOOK_"),
    Stat: ("stk_stat", "STK_STAT_"),
    PathTable: ("stk_table", "STK_TABLE_"),
}


class Layout(struct.Struct):
    """A C struct of abi.h as a little-endian `struct.Struct` with its members' names.

    `fields` are (C member, format) in order, padding included; a flexible array member is
    `"0s"` (its offset is the fixed part's size). `unpack_fields` and `member` read by name.
    """

    def __init__(self, c_name: str, fields: tuple[tuple[str, str], ...]) -> None:
        super().__init__("<" + "".join(code for _, code in fields))
        self.c_name = c_name
        self.fields = fields
        self._counts = [
            len(struct.unpack("<" + c, bytes(struct.calcsize("<" + c)))) for _, c in fields
        ]
        self._members = {
            name: (off, struct.Struct("<" + code))
            for (name, code), off in zip(fields, self.offsets().values(), strict=True)
        }
        # unpack_fields, once per record: (name, first value's index, count) of each member
        starts = list(itertools.accumulate(self._counts, initial=0))[:-1]
        self._picks = [
            (name, start, n)
            for (name, _), start, n in zip(fields, starts, self._counts, strict=True)
        ]

    def offsets(self) -> dict[str, int]:
        """Each member's byte offset."""
        out, fmt = {}, "<"
        for name, code in self.fields:
            out[name] = struct.calcsize(fmt)
            fmt += code
        return out

    def member(self, buffer: bytes, name: str) -> Any:
        """One member's value (the first, for a member of several values)."""
        off, member = self._members[name]
        return member.unpack_from(buffer, off)[0]

    def pack_fields(self, **values: Any) -> bytes:
        """The struct with the named members set, the others zero (a tuple for a member of
        several values)."""
        unknown = values.keys() - {name for name, _ in self.fields}
        if unknown:
            raise KeyError(f"{self.c_name} has no member {', '.join(sorted(unknown))}")
        args: list[Any] = []
        for (name, code), n in zip(self.fields, self._counts, strict=True):
            if name not in values:
                args.extend(struct.unpack("<" + code, bytes(struct.calcsize("<" + code))))
            elif n == 1:
                args.append(values[name])
            else:
                args.extend(values[name])
        return self.pack(*args)

    def unpack_fields(self, buffer: bytes, offset: int = 0) -> dict[str, Any]:
        """Member name → value (a tuple for a member that unpacks to several values)."""
        values = self.unpack_from(buffer, offset)
        return {
            name: values[start] if n == 1 else values[start : start + n]
            for name, start, n in self._picks
        }


_MASK = f"{Const.MASK_WORDS * 8}s"
MASK: Final = Layout("stk_mask", (("w", _MASK),))
CGROUP_KEY: Final = Layout("stk_cgroup_key", (("slot", "I"), ("pad", "I"), ("cgroup_id", "Q")))
CGROUP_VAL: Final = Layout("stk_cgroup_val", (("part", f"{2 * Const.MASK_WORDS * 8}s"),))
POD_CGROUP_KEY: Final = Layout(
    "stk_pod_cgroup_key", (("slot", "I"), ("name", f"{Const.POD_CGROUP_NAME}s"))
)
PATH_KEY: Final = Layout("stk_path_key", (("tag", "I"), ("path", f"{Const.PATH_KEY}s")))
LPM_KEY: Final = Layout(
    "stk_lpm_key", (("prefixlen", "I"), ("tag", "B"), ("path", f"{Const.LPM_PATH}s"))
)
LONG_KEY: Final = Layout("stk_long_key", (("tag", "B"), ("path", f"{Const.LONG_PATH}s")))
HEAD_KEY: Final = Layout(
    "stk_head_key", (("tag", "I"), ("len", "B"), ("head", f"{Const.HEAD_BYTES}s"))
)
NAME_KEY: Final = Layout("stk_name_key", (("slot", "I"), ("comm", "16s")))
PART_MASKS: Final = Layout(
    "stk_part_masks",
    (
        ("any_path", _MASK),
        ("any_name", _MASK),
        ("req_interactive", _MASK),
        ("req_non_interactive", _MASK),
        ("ignore_mounts", _MASK),
        ("ignore_files", _MASK),
        ("blocking", _MASK),
        ("any_head", "I"),
        ("pad", "I"),
    ),
)
RESPONSE: Final = Layout(
    "stk_response",
    (("match", _MASK), ("exclude", _MASK), ("actions", "I"), ("policy", "H"), ("pad", "H")),
)
CONTROL: Final = Layout(
    "stk_control",
    (("active_slot", "I"), ("seq", "I"), ("generation", "2Q"), ("n_responses", "4I")),
)
REC_HDR: Final = Layout(
    "stk_rec_hdr",
    (
        ("version", "H"),
        ("kind", "H"),
        ("hook", "H"),
        ("outcome", "B"),
        ("slot", "B"),
        ("size", "I"),
        ("actions", "I"),
        ("ktime_ns", "Q"),
        ("cgroup_id", "Q"),
        ("generation", "Q"),
        ("mntns", "I"),
        ("pid", "I"),
        ("tgid", "I"),
        ("ppid", "I"),
        ("uid", "I"),
        ("gid", "I"),
        ("matched", _MASK),
    ),
)
_HDR = f"{REC_HDR.size}s"
PROC_REC: Final = Layout(
    "stk_proc_rec",
    (
        ("h", _HDR),
        ("start_time_ns", "Q"),
        ("parent_start_time_ns", "Q"),
        ("sid", "I"),
        ("pgid", "I"),
        ("tty_index", "I"),
        ("tty_major", "I"),
        ("exit_code", "I"),
        ("interactive", "B"),
        ("exe_truncated", "B"),
        ("exe_fileless", "B"),
        ("pad", "B"),
        ("comm", "16s"),
        ("exe_len", "H"),
        ("cwd_len", "H"),
        ("args_len", "H"),
        ("pad2", "H"),
        ("data", "0s"),
    ),
)
FILE_REC: Final = Layout(
    "stk_file_rec",
    (
        ("h", _HDR),
        ("ops", "I"),
        ("flags", "I"),
        ("mode", "I"),
        ("fmode", "I"),
        ("volume", "B"),
        ("path_from_fd", "B"),
        ("path_len", "H"),
        ("path_truncated", "B"),
        ("other_name", "B"),
        ("names_unknown", "B"),
        ("path_swapped", "B"),
        ("comm", "16s"),
        ("path", "0s"),
    ),
)
CGROUP_REC: Final = Layout(
    "stk_cgroup_rec",
    (
        ("version", "H"),
        ("kind", "H"),
        ("created", "B"),
        ("path_truncated", "B"),
        ("path_len", "H"),
        ("level", "I"),
        ("pad", "I"),
        ("ktime_ns", "Q"),
        ("cgroup_id", "Q"),
        ("path", "0s"),
    ),
)
PROBE_STATE: Final = Layout(
    "stk_probe_state",
    (("target_ppid", "I"), ("hits", "I"), ("ret", "q"), ("deny_tid", "I"), ("pad", "I")),
)
LAYOUTS: Final = (
    MASK,
    CGROUP_KEY,
    CGROUP_VAL,
    POD_CGROUP_KEY,
    PATH_KEY,
    LPM_KEY,
    LONG_KEY,
    HEAD_KEY,
    NAME_KEY,
    PART_MASKS,
    RESPONSE,
    CONTROL,
    REC_HDR,
    PROC_REC,
    FILE_REC,
    CGROUP_REC,
    PROBE_STATE,
)
