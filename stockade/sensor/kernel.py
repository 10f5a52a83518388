"""Load the kill-, lsm- or fmodret-mode programs and write policy bundles into their maps
(double-buffered)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from stockade.policy.bundle import Bundle as PolicyBundle
from stockade.policy.compiler import (
    MAX_SELECTORS_PER_BUNDLE_PART,
    PART_OPERATIONS,
)
from stockade.policy.model import PartName
from stockade.policy.predicates import Workload
from stockade.policy.tables import PartTables, container_masks
from stockade.sensor.abi import (
    CGROUP_KEY,
    CONTROL,
    HEAD_KEY,
    LONG_KEY,
    LPM_KEY,
    NAME_KEY,
    OPERATIONS,
    PART_MASKS,
    PATH_KEY,
    POD_CGROUP_KEY,
    RESPONSE,
    SYSCALL_HOOKS,
    ActionBits,
    Const,
    Hook,
    Part,
    PathTable,
    Stat,
)
from stockade.sensor.libbpf import BpfObject, Closing, Link, Map, RingBuffer
from stockade.sensor.paths import ensure_fs, object_path

__all__ = [
    "FMODRET_HOOKS",
    "LSM_HOOKS",
    "MAX_SELECTORS",
    "Bundle",
    "FmodretSensor",
    "KillSensor",
    "LsmSensor",
    "mask_bytes",
    "open_sensor",
    "present_file_syscalls",
    "present_hooks",
]

MAX_SELECTORS: Final = MAX_SELECTORS_PER_BUNDLE_PART
MASK_BYTES: Final = MAX_SELECTORS // 8
_U32: Final = struct.Struct("<I")  # array maps' index
_U64: Final = struct.Struct("<Q")  # a stk_stats counter (per CPU)
_PART_NAMES: Final[Mapping[Part, PartName]] = {Part.PROCESS: "process", Part.FILE: "file"}
# lsm mode: program → the LSM hook it is attached to (bpf/stockade_lsm.bpf.c)
LSM_HOOKS: Final[Mapping[str, Hook]] = {
    "stk_lsm_exec": Hook.LSM_BPRM_CHECK, "stk_lsm_fork": Hook.LSM_TASK_ALLOC,
    "stk_lsm_mmap": Hook.LSM_MMAP_FILE,
    "stk_lsm_file_open": Hook.LSM_FILE_OPEN, "stk_lsm_mknod": Hook.LSM_PATH_MKNOD,
    "stk_lsm_unlink": Hook.LSM_PATH_UNLINK, "stk_lsm_rename": Hook.LSM_PATH_RENAME,
    "stk_lsm_link": Hook.LSM_PATH_LINK, "stk_lsm_chmod": Hook.LSM_PATH_CHMOD,
    "stk_lsm_truncate": Hook.LSM_PATH_TRUNCATE, "stk_lsm_file_truncate": Hook.LSM_FILE_TRUNCATE,
}  # fmt: skip
# fmodret mode: program → the security_* function it is attached to
# (bpf/stockade_fmodret.bpf.c): the functions that call LSM_HOOKS' hooks, in the same order
FMODRET_HOOKS: Final[Mapping[str, Hook]] = {
    prog.replace("stk_lsm_", "stk_fmodret_"): Hook[hook.name.replace("LSM_", "FMODRET_", 1)]
    for prog, hook in LSM_HOOKS.items()
}
VMLINUX_BTF: Final = Path("/sys/kernel/btf/vmlinux")


def _attach_function(hook: Hook) -> str:
    """The kernel function a deny-mode program attaches to: BPF LSM's bpf_lsm_<hook>, or
    (fmodret) the security_* function itself."""
    return hook.point if hook >= Hook.FMODRET_BPRM_CHECK else f"bpf_lsm_{hook.point}"


def present_hooks(hooks: Mapping[str, Hook]) -> dict[str, Hook]:
    """The hooks (LSM_HOOKS or FMODRET_HOOKS) this kernel has (file_truncate since 6.2):
    their attach functions are named in the kernel's BTF."""
    btf = VMLINUX_BTF.read_bytes()
    return {
        prog: hook for prog, hook in hooks.items()
        if f"\0{_attach_function(hook)}\0".encode() in btf
    }  # fmt: skip


# io_uring's per-request tracepoint, named `io_uring_submit_sqe` before 6.4 (same first
# argument, the request); kernels without io_uring have neither.
IO_URING_TRACEPOINTS = ("io_uring_submit_req", "io_uring_submit_sqe")


def io_uring_tracepoint() -> str | None:
    """The io_uring submit tracepoint this kernel has, by its BTF type `btf_trace_<name>`."""
    btf = VMLINUX_BTF.read_bytes()
    return next((n for n in IO_URING_TRACEPOINTS if f"\0btf_trace_{n}\0".encode() in btf), None)


def present_file_syscalls() -> list[Hook]:
    """The file-syscall hooks this kernel has tracepoints for (no fchmodat2 before 6.6; arm64
    has only the *at syscalls)."""
    return [
        hook for hook in SYSCALL_HOOKS
        if Path(f"/sys/kernel/tracing/events/syscalls/sys_enter_{hook.point}").is_dir()
    ]  # fmt: skip


@dataclass(frozen=True)
class Bundle:
    """What the loader writes into one slot: the part tables and each cgroup's masks.

    `parts` are the table interpreter's own tables (`PartTables`), so the kernel
    and `PartTables.decide` read the same data; `cgroups` maps a listed cgroup id
    to its per-part selector mask (`tables.container_masks`).
    """

    generation: int
    cgroups: Mapping[int, Mapping[PartName, int]]
    parts: Mapping[PartName, PartTables]

    @classmethod
    def from_policy(
        cls, bundle: PolicyBundle, containers: Mapping[int, Workload], generation: int
    ) -> Bundle:
        """A compiled bundle (`compiler.compile_bundle`) for the listed containers (cgroup id →
        workload) as this node's maps."""
        return cls(
            generation=generation,
            cgroups={cgid: container_masks(bundle, w) for cgid, w in containers.items()},
            parts={part: PartTables.from_bundle(bundle, part) for part in PART_OPERATIONS},
        )


def mask_bytes(mask: int) -> bytes:
    """A selector mask as 16 little-endian u64 words."""
    if mask < 0 or mask >> MAX_SELECTORS:
        raise ValueError("mask must be a non-negative int below 2**1024")
    return mask.to_bytes(MASK_BYTES, "little")


def _path_bytes(path: str) -> bytes:
    """A table path (zero-padded to its key by the layout)."""
    raw = path.encode()
    if not raw.startswith(b"/") or len(raw) > Const.LONG_PATH or b"\0" in raw:
        raise ValueError(f"bad path {path!r} (absolute, at most {Const.LONG_PATH} bytes)")
    return raw


def _long_key(slot: int, table: PathTable, part: Part, path: bytes) -> bytes:
    """A stk_long_paths key: entries longer than the other tables' keys hold."""
    return LONG_KEY.pack(slot << 4 | int(table) << 1 | part, path)


def _blocking(tables: PartTables) -> int:
    """The selectors in the match of some BLOCK row: lsm mode's exec/fork hooks, which only
    block, stop when the candidates have none of them."""
    mask = 0
    for row in tables.responses:
        if ActionBits.BLOCK in row.actions:
            mask |= row.match
    return mask


def _cgroup_value(masks: Mapping[PartName, int]) -> bytes:
    """A stk_cgroup_val: a cgroup's process and file selector masks."""
    return mask_bytes(masks.get("process", 0)) + mask_bytes(masks.get("file", 0))


def _cgroup_entry(slot: int, cgid: int, masks: Mapping[PartName, int]) -> tuple[bytes, bytes]:
    """A stk_cgroup_masks entry: the cgroup's masks in `slot`."""
    return CGROUP_KEY.pack(slot, 0, cgid), _cgroup_value(masks)


def _head_keys(heads: Mapping[str, PathTable]) -> dict[tuple[int, bytes], int]:
    """First components as stk_path_heads (len, head): the length, HEAD_BYTES + 1 when longer,
    and the first HEAD_BYTES bytes → their tables' bits, OR-ed where long components share a
    key."""
    keys: dict[tuple[int, bytes], int] = {}
    for head, bits in heads.items():
        raw = head.encode()
        key = (min(len(raw), Const.HEAD_BYTES + 1), raw[: Const.HEAD_BYTES])
        keys[key] = keys.get(key, 0) | bits
    return keys


class KillSensor(Closing):
    """The loaded stockade.bpf.o: attach, fill maps, read records."""

    OBJECT: str = "stockade.bpf.o"
    MODE: str = "kill"

    def __init__(self, obj_file: Path | None = None, grace_s: float = 0.2) -> None:
        ensure_fs()
        t0 = time.monotonic()
        self.obj = BpfObject(obj_file or object_path(self.OBJECT))
        for name in self._absent_programs():
            self.obj.program(name).set_autoload(False)
        self.obj.load()
        self.load_seconds = time.monotonic() - t0
        self.grace_s = grace_s
        self.links: list[Link] = []
        self._last_flip = 0.0
        self.maps: dict[str, Map] = {  # by name without the C side's "stk_" prefix
            n: self.obj.map(f"stk_{n}")
            for n in (
                "control", "cgroup_masks", "op_masks", "part_masks", "exact_paths",
                "child_paths", "dir_paths", "recursive_paths", "long_paths", "path_heads",
                "names", "responses", "cgroups", "alerts", "events", "stats", "pod_cgroups",
            )
        }  # fmt: skip

    def _absent_programs(self) -> list[str]:
        """Programs for what this kernel lacks: not loaded (the verifier would refuse them).
        The io_uring program is pointed at the tracepoint's older name where that is the one."""
        self.uring_point = io_uring_tracepoint()
        if self.uring_point is None:
            return ["stk_uring_submit"]
        if self.uring_point != IO_URING_TRACEPOINTS[0]:
            self.obj.program("stk_uring_submit").set_attach_target(self.uring_point)
        return []

    # -- attach -----------------------------------------------------------------

    def attach(self) -> list[str]:
        """Attach every program; returns the attach points (skips absent syscalls)."""
        done = self._attach_shared()
        enter, leave = self.obj.program("stk_sys_enter"), self.obj.program("stk_sys_exit")
        for hook in present_file_syscalls():
            # exit first: an enter without its exit would leave a stale stash; the enter
            # program learns which syscall it is from the cookie (no syscall numbers: they
            # differ between architectures)
            self.links.append(leave.attach_tracepoint("syscalls", f"sys_exit_{hook.point}"))
            self.links.append(
                enter.attach_tracepoint("syscalls", f"sys_enter_{hook.point}", cookie=hook)
            )
            done.append(f"syscalls/{hook.point}")
        # the 32-bit syscall ABI, which the syscalls/ tracepoints don't see (exit first too)
        self.links.append(self.obj.program("stk_compat_exit").attach())
        self.links.append(self.obj.program("stk_compat_enter").attach())
        done += ["tp_btf/sys_exit", "tp_btf/sys_enter"]
        if self.uring_point:
            self.links.append(self.obj.program("stk_uring_submit").attach())
            done.append(f"tp_btf/{self.uring_point}")
        # code mapped without exec: ld.so PROGRAM
        self.links.append(
            self.obj.program("stk_mmap_exec").attach_tracepoint("syscalls", "sys_enter_mmap")
        )
        return [*done, "syscalls/mmap"]

    def _attach_shared(self) -> list[str]:
        """The programs the same in both modes: cgroup_{mkdir,rmdir} (first: a caller that
        then scans the cgroup filesystem misses no cgroup) and sched_process_{exec,exit,fork}."""
        self.links.append(self.obj.program("stk_cgroup_mkdir").attach())
        self.links.append(self.obj.program("stk_cgroup_rmdir").attach())
        self.links.append(
            self.obj.program("stk_exec").attach_tracepoint("sched", "sched_process_exec")
        )
        self.links.append(
            self.obj.program("stk_exit").attach_tracepoint("sched", "sched_process_exit")
        )
        self.links.append(self.obj.program("stk_fork").attach())
        return [
            "tp_btf/cgroup_mkdir",
            "tp_btf/cgroup_rmdir",
            "sched/sched_process_exec",
            "sched/sched_process_exit",
            "tp_btf/sched_process_fork",
        ]

    def close(self) -> None:
        """Detach and unload."""
        for link in self.links:
            link.destroy()
        self.links.clear()
        self.obj.close()

    # -- bundles ----------------------------------------------------------------

    def _control(self) -> tuple[int, int, list[int], list[int]]:
        raw = self.maps["control"].lookup(_U32.pack(0)) or bytes(CONTROL.size)
        c = CONTROL.unpack_fields(raw)
        return c["active_slot"], c["seq"], list(c["generation"]), list(c["n_responses"])

    def _write_control(self, active: int, seq: int, gens: list[int], counts: list[int]) -> None:
        self.maps["control"].update(
            _U32.pack(0), CONTROL.pack(active, seq & 0xFFFFFFFF, *gens, *counts)
        )

    def _changed(self) -> None:
        """Bump stk_control.seq after a listed cgroup's masks changed: a file syscall in
        flight then looks its masks up again at its exit instead of reusing its entry's."""
        active, seq, gens, counts = self._control()
        self._write_control(active, seq + 1, gens, counts)

    @property
    def active_slot(self) -> int:
        """The slot the programs read now."""
        return self._control()[0]

    def _clear_slot(self, name: str, slot: int, slot_of: Callable[[bytes], int]) -> None:
        m = self.maps[name]
        for k in list(m.keys()):
            if slot_of(k) == slot:
                m.delete(k)

    def write_slot(self, slot: int, bundle: Bundle) -> None:
        """Write a complete bundle into `slot` (which must not be active)."""
        if slot not in (0, 1):
            raise ValueError("slot is 0 or 1")
        self._clear_slot("cgroup_masks", slot, lambda k: CGROUP_KEY.member(k, "slot"))
        self._clear_slot("exact_paths", slot, lambda k: PATH_KEY.member(k, "tag") >> 8)
        self._clear_slot("child_paths", slot, lambda k: PATH_KEY.member(k, "tag") >> 8)
        self._clear_slot("dir_paths", slot, lambda k: PATH_KEY.member(k, "tag") >> 8)
        self._clear_slot("recursive_paths", slot, lambda k: LPM_KEY.member(k, "tag") >> 4)
        self._clear_slot("long_paths", slot, lambda k: LONG_KEY.member(k, "tag") >> 4)
        self._clear_slot("path_heads", slot, lambda k: HEAD_KEY.member(k, "tag") >> 8)
        self._clear_slot("names", slot, lambda k: NAME_KEY.member(k, "slot"))

        self.maps["cgroup_masks"].update_batch(
            [_cgroup_entry(slot, cgid, masks) for cgid, masks in bundle.cgroups.items()]
        )
        ops = dict.fromkeys(OPERATIONS, 0)
        for tables in bundle.parts.values():
            ops.update(tables.operations)
        self.maps["op_masks"].update_batch(
            [
                (_U32.pack(slot * Const.OP_SLOTS + OPERATIONS[op]), mask_bytes(m))
                for op, m in ops.items()
            ]
        )
        names: list[tuple[bytes, bytes]] = []
        for part in Part:
            t = bundle.parts.get(_PART_NAMES[part])
            masks = (
                (t.paths.any, t.any_name, t.require_interactive, t.require_not_interactive,
                 t.ignore_mounts, t.ignore_files, _blocking(t))
                if t is not None else (0,) * 7
            )  # fmt: skip
            heads = t.paths.heads if t is not None else {}
            self.maps["part_masks"].update(
                _U32.pack(slot * 2 + part),
                PART_MASKS.pack(*(mask_bytes(m) for m in masks), heads is None, 0),
            )
            if t is None:
                continue
            tag = slot << 8 | part
            self.maps["path_heads"].update_batch(
                [
                    (HEAD_KEY.pack(tag, length, head), bytes([bits]))
                    for (length, head), bits in _head_keys(heads or {}).items()
                ]
            )
            long: list[tuple[bytes, bytes]] = []
            for name, kind, table in (
                ("exact_paths", PathTable.EXACT, t.paths.exact),
                ("child_paths", PathTable.CHILDREN, t.paths.children),
            ):
                short: list[tuple[bytes, bytes]] = []
                for p, m in table.items():
                    raw = _path_bytes(p)
                    if len(raw) < Const.PATH_KEY:
                        short.append((PATH_KEY.pack(tag, raw), mask_bytes(m)))
                    else:
                        long.append((_long_key(slot, kind, part, raw), mask_bytes(m)))
                self.maps[name].update_batch(short)
            # renames of these directories move the patterns below them (longer ones: not
            # looked up, the kernel matches directories of at most STK_MATCH_MAX bytes)
            self.maps["dir_paths"].update_batch(
                [
                    (PATH_KEY.pack(tag, raw), mask_bytes(m))
                    for d, m in t.paths.below.items()
                    if len(raw := _path_bytes(d)) < Const.PATH_KEY
                ]
            )
            lpm = self.maps["recursive_paths"]
            for key, m in t.paths.recursive_lpm.items():
                prefix = _path_bytes(key)
                if len(prefix) > Const.LPM_PATH:
                    long.append((_long_key(slot, PathTable.RECURSIVE, part, prefix), mask_bytes(m)))
                    continue
                lpm.update(
                    LPM_KEY.pack(8 * (1 + len(prefix)), slot << 4 | part, prefix), mask_bytes(m)
                )
            self.maps["long_paths"].update_batch(long)
            if len(t.responses) > Const.MAX_RESPONSES:
                raise ValueError(f"{part.name.lower()}: more than {Const.MAX_RESPONSES} responses")
            base = (slot * 2 + part) * Const.MAX_RESPONSES
            self.maps["responses"].update_batch(
                [
                    (
                        _U32.pack(base + i),
                        RESPONSE.pack(
                            mask_bytes(r.match), mask_bytes(r.exclude), int(r.actions), r.policy, 0
                        ),
                    )
                    for i, r in enumerate(t.responses)
                ]
            )
            for name, m in t.names.items():
                raw = name.encode()
                if len(raw) > 15:
                    raise ValueError(f"process name longer than 15 bytes: {name!r}")
                names.append((NAME_KEY.pack(slot, raw), mask_bytes(m)))
        self.maps["names"].update_batch(names)

        # counts and generation of this slot; the active slot is left as it is
        active, seq, gens, counts = self._control()
        gens[slot] = bundle.generation
        for part in Part:
            t = bundle.parts.get(_PART_NAMES[part])
            counts[slot * 2 + part] = len(t.responses) if t is not None else 0
        self._write_control(active, seq, gens, counts)

    def set_cgroup(self, slot: int, cgroup_id: int, masks: Mapping[PartName, int] | None) -> None:
        """List one cgroup in `slot` with its masks, or unlist it (None): how a container that
        appears or changes while a bundle is in force is decided, without a slot flip. Each
        map entry is replaced whole, so a program reads the old masks or the new ones."""
        if masks is None:
            self.maps["cgroup_masks"].delete(CGROUP_KEY.pack(slot, 0, cgroup_id))
        else:
            self.maps["cgroup_masks"].update(*_cgroup_entry(slot, cgroup_id, masks))
        self._changed()

    def set_pod_cgroups(self, slot: int, names: Mapping[str, Mapping[PartName, int]]) -> None:
        """The cgroups of known pods that aren't made yet, in `slot`: each by the name it will
        have, with the masks its `cgroup_mkdir` lists it with at once (bpf/lib/cgroup.h).
        Replaces what the slot held; entries that stay the same aren't written."""
        m = self.maps["pod_cgroups"]
        want = {POD_CGROUP_KEY.pack(slot, n.encode()): _cgroup_value(v) for n, v in names.items()}
        for key in list(m.keys()):
            if POD_CGROUP_KEY.member(key, "slot") == slot and key not in want:
                m.delete(key)
        for key, value in want.items():
            if m.lookup(key) != value:
                m.update(key, value)

    def activate(self, slot: int) -> None:
        """Flip the programs to `slot` (active_slot and seq: one 8-byte word)."""
        _, seq, gens, counts = self._control()
        self._write_control(slot, seq + 1, gens, counts)
        self._last_flip = time.monotonic()

    def prepare(self, bundle: Bundle) -> int:
        """Write the inactive slot (after the grace delay since the last flip); returns it,
        for `activate`. Programs go on reading the active slot meanwhile."""
        wait = self._last_flip + self.grace_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        slot = 1 - self.active_slot
        self.write_slot(slot, bundle)
        return slot

    def reload(self, bundle: Bundle) -> int:
        """Write the inactive slot, then flip to it."""
        slot = self.prepare(bundle)
        self.activate(slot)
        return slot

    # -- output -----------------------------------------------------------------

    def ring(self, callback: Callable[[bytes], None]) -> RingBuffer:
        """A consumer of the three ring buffers: cgroup records first (a container's cgroup
        before its processes), then alerts and blocks, then the rest; the first two are
        urgent (they end a gather at once)."""
        urgent = [self.maps["cgroups"], self.maps["alerts"]]
        return RingBuffer([*urgent, self.maps["events"]], callback, urgent)

    def stats(self) -> dict[str, int]:
        """Counters summed over CPUs (rb_fail: records lost; lost_*: of which log, alert, exit;
        cgroup_fail: cgroup records lost, apart)."""
        out = {}
        for stat in Stat:
            vals = self.maps["stats"].lookup_percpu(_U32.pack(stat))
            out[stat.name.lower()] = sum(_U64.unpack(v)[0] for v in vals)
        return out


class LsmSensor(KillSensor):
    """The loaded stockade_lsm.bpf.o: BPF LSM hooks deny with EPERM (outcome `denied`);
    the sched_process_* tracepoints report processes. Same maps, bundles and records."""

    OBJECT = "stockade_lsm.bpf.o"
    MODE = "lsm"
    HOOKS: Mapping[str, Hook] = LSM_HOOKS
    SECTION = "lsm"  # the programs' SEC() prefix

    def _absent_programs(self) -> list[str]:
        self.hooks = present_hooks(self.HOOKS)
        return [prog for prog in self.HOOKS if prog not in self.hooks]

    def attach(self) -> list[str]:
        """Attach the deny programs of the hooks this kernel has first (so nothing listed
        runs undecided), then the cgroup and process tracepoints; returns the attach points."""
        done = []
        for prog, hook in self.hooks.items():
            self.links.append(self.obj.program(prog).attach())  # as its SEC() says
            done.append(f"{self.SECTION}/{hook.point}")
        return done + self._attach_shared()


class FmodretSensor(LsmSensor):
    """The loaded stockade_fmodret.bpf.o: lsm mode's bodies as fmod_ret programs on the
    security_* functions that call the LSM hooks, for kernels without bpf in the active LSM
    list; they too deny with EPERM before the operation. Same maps, bundles and records."""

    OBJECT = "stockade_fmodret.bpf.o"
    MODE = "fmodret"
    HOOKS = FMODRET_HOOKS
    SECTION = "fmod_ret"


def open_sensor(mode: str, grace_s: float = 0.2) -> KillSensor:
    """Load the programs for an enforcement mode (`lsm`, `fmodret`, else the kill-mode
    object)."""
    sensor = {"lsm": LsmSensor, "fmodret": FmodretSensor}.get(mode, KillSensor)
    return sensor(grace_s=grace_s)
