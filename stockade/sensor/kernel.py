"""Load the kill-mode or lsm-mode programs and write policy bundles into their maps
(double-buffered)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from stockade.policy.compiler import (
    MAX_RESPONSES_PER_BUNDLE_PART,
    MAX_SELECTORS_PER_BUNDLE_PART,
    PART_OPERATIONS,
)
from stockade.policy.compiler import Bundle as PolicyBundle
from stockade.policy.model import PartName
from stockade.policy.predicates import Workload
from stockade.policy.tables import ActionBits, PartTables, PathTable, container_masks
from stockade.sensor.libbpf import BpfObject, Link, Map, RingBuffer
from stockade.sensor.paths import ensure_fs, object_path

__all__ = [
    "FILE_SYSCALLS",
    "LSM_HOOKS",
    "MAX_RESPONSES",
    "MAX_SELECTORS",
    "OP_INDEX",
    "STATS",
    "Bundle",
    "KillSensor",
    "LsmSensor",
    "mask_bytes",
    "open_sensor",
    "present_file_syscalls",
]

MAX_SELECTORS: Final = MAX_SELECTORS_PER_BUNDLE_PART
MASK_BYTES: Final = MAX_SELECTORS // 8
MAX_RESPONSES: Final = MAX_RESPONSES_PER_BUNDLE_PART  # STK_MAX_RESPONSES in bpf/stockade.h
OP_SLOTS: Final = 8
HEAD_BYTES: Final = 11  # STK_HEAD_BYTES in bpf/stockade.h
OP_INDEX: Final[Mapping[str, int]] = {
    "fork": 0,
    "exec": 1,
    "createExecutable": 2,
    "modifyExecutable": 3,
    "createFile": 4,
    "modifyFile": 5,
    "deleteFile": 6,
}
PART_INDEX: Final[Mapping[PartName, int]] = {"process": 0, "file": 1}
STATS: Final = (
    "rb_fail", "inflight_fail", "path_truncated", "records", "kills", "kill_fail", "denials",
)  # fmt: skip
# lsm mode: program name → LSM hook (bpf/stockade_lsm.bpf.c)
LSM_HOOKS: Final[Mapping[str, str]] = {
    "stk_lsm_exec": "bprm_check_security", "stk_lsm_fork": "task_alloc",
    "stk_lsm_file_open": "file_open", "stk_lsm_mknod": "path_mknod",
    "stk_lsm_unlink": "path_unlink", "stk_lsm_rename": "path_rename",
    "stk_lsm_link": "path_link", "stk_lsm_chmod": "path_chmod",
    "stk_lsm_truncate": "path_truncate",
}  # fmt: skip
FILE_SYSCALLS: Final = (
    "open", "openat", "openat2", "creat", "unlink", "unlinkat", "rename", "renameat",
    "renameat2", "link", "linkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "truncate",
    "ftruncate", "mknod", "mknodat",
)  # fmt: skip


def present_file_syscalls() -> list[str]:
    """The FILE_SYSCALLS this kernel has tracepoints for (e.g. no fchmodat2 before 6.6)."""
    return [
        sc for sc in FILE_SYSCALLS
        if Path(f"/sys/kernel/tracing/events/syscalls/sys_enter_{sc}").is_dir()
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


def _path_bytes(path: str, size: int) -> bytes:
    raw = path.encode()
    if not raw.startswith(b"/") or len(raw) > size - 1 or b"\0" in raw:
        raise ValueError(f"bad path {path!r} (absolute, at most {size - 1} bytes)")
    return raw.ljust(size, b"\0")


def _blocking(tables: PartTables) -> int:
    """The selectors in the match of some BLOCK row: lsm mode's exec/fork hooks, which only
    block, stop when the candidates have none of them."""
    mask = 0
    for row in tables.responses:
        if ActionBits.BLOCK in row.actions:
            mask |= row.match
    return mask


def _head_keys(heads: Mapping[str, PathTable]) -> dict[bytes, int]:
    """First components as path_heads keys after the tag (length byte, STK_HEAD_BYTES + 1 when
    longer, and the first STK_HEAD_BYTES bytes, zero-padded) → their tables' bits, OR-ed
    where long components share a key."""
    keys: dict[bytes, int] = {}
    for head, bits in heads.items():
        raw = head.encode()
        key = bytes([min(len(raw), HEAD_BYTES + 1)]) + raw[:HEAD_BYTES].ljust(HEAD_BYTES, b"\0")
        keys[key] = keys.get(key, 0) | bits
    return keys


class KillSensor:
    """The loaded stockade.bpf.o: attach, fill maps, read records."""

    OBJECT: str = "stockade.bpf.o"
    MODE: str = "kill"

    def __init__(self, obj_file: Path | None = None, grace_s: float = 0.2) -> None:
        ensure_fs()
        t0 = time.monotonic()
        self.obj = BpfObject(obj_file or object_path(self.OBJECT))
        self.obj.load()
        self.load_seconds = time.monotonic() - t0
        self.grace_s = grace_s
        self.links: list[Link] = []
        self._last_flip = 0.0
        self.maps: dict[str, Map] = {
            n: self.obj.map(n)
            for n in (
                "control", "cgroup_masks", "op_masks", "part_masks", "exact_paths",
                "child_paths", "recursive_paths", "path_heads", "names", "responses", "events",
                "stats",
            )
        }  # fmt: skip

    # -- attach -----------------------------------------------------------------

    def attach(self) -> list[str]:
        """Attach every program; returns the attach points (skips absent syscalls)."""
        done = self._attach_process()
        enter, leave = self.obj.program("stk_sys_enter"), self.obj.program("stk_sys_exit")
        for sc in present_file_syscalls():
            # exit first: an enter without its exit would leave a stale stash
            self.links.append(leave.attach_tracepoint("syscalls", f"sys_exit_{sc}"))
            self.links.append(enter.attach_tracepoint("syscalls", f"sys_enter_{sc}"))
            done.append(f"syscalls/{sc}")
        return done

    def _attach_process(self) -> list[str]:
        """The sched_process_{exec,exit,fork} programs (the same in both modes)."""
        self.links.append(
            self.obj.program("stk_exec").attach_tracepoint("sched", "sched_process_exec")
        )
        self.links.append(
            self.obj.program("stk_exit").attach_tracepoint("sched", "sched_process_exit")
        )
        self.links.append(self.obj.program("stk_fork").attach())
        return [
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

    def __enter__(self) -> KillSensor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- bundles ----------------------------------------------------------------

    def _control(self) -> tuple[int, list[int], list[int]]:
        raw = self.maps["control"].lookup(b"\0" * 4) or b"\0" * 40
        slot, _, g0, g1, *counts = struct.unpack("<IIQQ4I", raw)
        return slot, [g0, g1], counts

    @property
    def active_slot(self) -> int:
        """The slot the programs read now."""
        return self._control()[0]

    def _clear_slot(self, name: str, slot: int, tag_of: Callable[[bytes], int]) -> None:
        m = self.maps[name]
        for k in list(m.keys()):
            if tag_of(k) == slot:
                m.delete(k)

    def write_slot(self, slot: int, bundle: Bundle) -> None:
        """Write a complete bundle into `slot` (which must not be active)."""
        if slot not in (0, 1):
            raise ValueError("slot is 0 or 1")
        self._clear_slot("cgroup_masks", slot, lambda k: int.from_bytes(k[:4], "little"))
        self._clear_slot("exact_paths", slot, lambda k: k[1])
        self._clear_slot("child_paths", slot, lambda k: k[1])
        self._clear_slot("recursive_paths", slot, lambda k: k[4] >> 4)
        self._clear_slot("path_heads", slot, lambda k: k[1])
        self._clear_slot("names", slot, lambda k: int.from_bytes(k[:4], "little"))

        self.maps["cgroup_masks"].update_batch(
            [
                (
                    struct.pack("<IIQ", slot, 0, cgid),
                    mask_bytes(masks.get("process", 0)) + mask_bytes(masks.get("file", 0)),
                )
                for cgid, masks in bundle.cgroups.items()
            ]
        )
        ops = {op: 0 for op in OP_INDEX}
        for tables in bundle.parts.values():
            ops.update(tables.operations)
        self.maps["op_masks"].update_batch(
            [
                (struct.pack("<I", slot * OP_SLOTS + OP_INDEX[op]), mask_bytes(m))
                for op, m in ops.items()
            ]
        )
        names: list[tuple[bytes, bytes]] = []
        for part, pidx in PART_INDEX.items():
            t = bundle.parts.get(part)
            masks = (
                (t.paths.any, t.any_name, t.require_interactive, t.require_not_interactive,
                 t.ignore_mounts, t.ignore_files, _blocking(t))
                if t is not None else (0,) * 7
            )  # fmt: skip
            heads = t.paths.heads if t is not None else {}
            self.maps["part_masks"].update(
                struct.pack("<I", slot * 2 + pidx),
                b"".join(mask_bytes(m) for m in masks) + struct.pack("<II", heads is None, 0),
            )
            if t is None:
                continue
            tag = struct.pack("<I", slot << 8 | pidx)
            self.maps["path_heads"].update_batch(
                [(tag + key, bytes([bits])) for key, bits in _head_keys(heads or {}).items()]
            )
            for name, table in (("exact_paths", t.paths.exact), ("child_paths", t.paths.children)):
                self.maps[name].update_batch(
                    [(tag + _path_bytes(p, 256), mask_bytes(m)) for p, m in table.items()]
                )
            lpm = self.maps["recursive_paths"]
            for key, m in t.paths.recursive_lpm.items():
                prefix = key.encode()
                if len(prefix) > 255:
                    raise ValueError(f"recursive prefix too long: {key!r}")
                lpm.update(
                    struct.pack("<IB", 8 * (1 + len(prefix)), slot << 4 | pidx)
                    + prefix.ljust(255, b"\0"),
                    mask_bytes(m),
                )
            if len(t.responses) > MAX_RESPONSES:
                raise ValueError(f"{part}: more than {MAX_RESPONSES} responses")
            base = (slot * 2 + pidx) * MAX_RESPONSES
            self.maps["responses"].update_batch(
                [
                    (
                        struct.pack("<I", base + i),
                        mask_bytes(r.match)
                        + mask_bytes(r.exclude)
                        + struct.pack("<IHH", int(r.actions), r.policy, 0),
                    )
                    for i, r in enumerate(t.responses)
                ]
            )
            for name, m in t.names.items():
                raw = name.encode()
                if len(raw) > 15:
                    raise ValueError(f"process name longer than 15 bytes: {name!r}")
                names.append((struct.pack("<I", slot) + raw.ljust(16, b"\0"), mask_bytes(m)))
        self.maps["names"].update_batch(names)

        # counts and generation of this slot; the active slot is left as it is
        active, gens, counts = self._control()
        gens[slot] = bundle.generation
        for part, pidx in PART_INDEX.items():
            t = bundle.parts.get(part)
            counts[slot * 2 + pidx] = len(t.responses) if t is not None else 0
        self.maps["control"].update(b"\0" * 4, struct.pack("<IIQQ4I", active, 0, *gens, *counts))

    def activate(self, slot: int) -> None:
        """Flip the programs to `slot` (one u32 write)."""
        _, gens, counts = self._control()
        self.maps["control"].update(b"\0" * 4, struct.pack("<IIQQ4I", slot, 0, *gens, *counts))
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
        """A consumer of the events ring buffer."""
        return RingBuffer(self.maps["events"], callback)

    def stats(self) -> dict[str, int]:
        """Counters summed over CPUs (rb_fail: records lost)."""
        out = {}
        for i, name in enumerate(STATS):
            vals = self.maps["stats"].lookup_percpu(struct.pack("<I", i))
            out[name] = sum(struct.unpack("<Q", v)[0] for v in vals)
        return out


class LsmSensor(KillSensor):
    """The loaded stockade_lsm.bpf.o: BPF LSM hooks deny with EPERM (outcome `denied`);
    the sched_process_* tracepoints report processes. Same maps, bundles and records."""

    OBJECT = "stockade_lsm.bpf.o"
    MODE = "lsm"

    def attach(self) -> list[str]:
        """Attach the LSM programs first (so nothing listed runs undecided), then the
        process tracepoints; returns the attach points."""
        done = []
        for prog, hook in LSM_HOOKS.items():
            self.links.append(self.obj.program(prog).attach_lsm())
            done.append(f"lsm/{hook}")
        return done + self._attach_process()


def open_sensor(mode: str, grace_s: float = 0.2) -> KillSensor:
    """Load the programs for an enforcement mode (`lsm`, else the kill-mode object)."""
    return LsmSensor(grace_s=grace_s) if mode == "lsm" else KillSensor(grace_s=grace_s)
