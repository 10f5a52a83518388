"""Load the kill-mode programs and write policy bundles into their maps (double-buffered)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, TypedDict

from stockade.sensor.libbpf import BpfObject, Link, Map, RingBuffer
from stockade.sensor.paths import ensure_fs, object_path

__all__ = [
    "FILE_SYSCALLS",
    "MAX_RESPONSES",
    "MAX_SELECTORS",
    "OP_INDEX",
    "STATS",
    "Bundle",
    "KillSensor",
    "PartMasks",
    "PathTables",
    "mask_bytes",
]

MAX_SELECTORS: Final = 1024
MASK_BYTES: Final = MAX_SELECTORS // 8
MAX_RESPONSES: Final = 256
OP_SLOTS: Final = 8
OP_INDEX: Final[Mapping[str, int]] = {
    "fork": 0,
    "exec": 1,
    "createExecutable": 2,
    "modifyExecutable": 3,
    "createFile": 4,
    "modifyFile": 5,
    "deleteFile": 6,
}
PART_INDEX: Final[Mapping[str, int]] = {"process": 0, "file": 1}
STATS: Final = ("rb_fail", "inflight_fail", "path_truncated", "records", "kills", "kill_fail")
FILE_SYSCALLS: Final = (
    "open", "openat", "openat2", "creat", "unlink", "unlinkat", "rename", "renameat",
    "renameat2", "link", "linkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "truncate",
    "ftruncate", "mknod", "mknodat",
)  # fmt: skip

Part = Literal["process", "file"]


class PartMasks(TypedDict, total=False):
    """Per-part selector masks (selector i = bit i); missing means 0."""

    any_path: int  # selectors without a path condition
    any_name: int  # selectors without processName (process part)
    requires_interactive: int  # sessionLeaderInteractive: true
    requires_non_interactive: int  # sessionLeaderInteractive: false
    ignore_mounts: int  # ignoreVolumeMounts (file part)
    ignore_files: int  # ignoreVolumeFiles (file part)


class PathTables(TypedDict, total=False):
    """Path conditions: exact "/a/b", children of "/a" ("/a/*"), recursive "/a" ("/a/**")."""

    exact: Mapping[str, int]
    children: Mapping[str, int]
    recursive: Mapping[str, int]  # "/" for "/**"; ancestors are folded in by the loader


class Bundle(TypedDict):
    """One compiled policy bundle for this node, in plain Python values."""

    generation: int
    cgroups: Mapping[int, Mapping[Part, int]]  # cgroup id -> part -> selector mask
    ops: Mapping[str, int]  # operation name (OP_INDEX) -> selector mask
    parts: Mapping[Part, PartMasks]
    paths: Mapping[Part, PathTables]  # process: processExecutable, file: targetFilePath
    names: Mapping[str, int]  # processName (<= 15 bytes) -> mask
    responses: Mapping[Part, Sequence[tuple[int, int, int, int]]]  # match, exclude, actions, policy


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


def _fold_recursive(table: Mapping[str, int]) -> dict[bytes, int]:
    """Map "/a/b" -> prefix b"/a/b/" with the union of its own and all ancestors' masks."""
    prefixes = {("/" if d == "/" else d.rstrip("/") + "/").encode(): m for d, m in table.items()}
    out: dict[bytes, int] = {}
    for p in prefixes:
        out[p] = 0
        for q, m in prefixes.items():
            if p.startswith(q):
                out[p] |= m
    return out


class KillSensor:
    """The loaded stockade.bpf.o: attach, fill maps, read records."""

    def __init__(self, obj_file: Path | None = None, grace_s: float = 0.2) -> None:
        ensure_fs()
        t0 = time.monotonic()
        self.obj = BpfObject(obj_file or object_path("stockade.bpf.o"))
        self.obj.load()
        self.load_seconds = time.monotonic() - t0
        self.grace_s = grace_s
        self.links: list[Link] = []
        self._last_flip = 0.0
        self.maps: dict[str, Map] = {
            n: self.obj.map(n)
            for n in (
                "control", "cgroup_masks", "op_masks", "part_masks", "exact_paths",
                "child_paths", "recursive_paths", "names", "responses", "events", "stats",
            )
        }  # fmt: skip

    # -- attach -----------------------------------------------------------------

    def attach(self) -> list[str]:
        """Attach every program; returns the attach points (skips absent syscalls)."""
        done = []
        self.links.append(
            self.obj.program("stk_exec").attach_tracepoint("sched", "sched_process_exec")
        )
        self.links.append(
            self.obj.program("stk_exit").attach_tracepoint("sched", "sched_process_exit")
        )
        self.links.append(self.obj.program("stk_fork").attach())
        done += [
            "sched/sched_process_exec",
            "sched/sched_process_exit",
            "tp_btf/sched_process_fork",
        ]
        enter, leave = self.obj.program("stk_sys_enter"), self.obj.program("stk_sys_exit")
        for sc in FILE_SYSCALLS:
            if not Path(f"/sys/kernel/tracing/events/syscalls/sys_enter_{sc}").is_dir():
                continue
            # exit first: an enter without its exit would leave a stale stash
            self.links.append(leave.attach_tracepoint("syscalls", f"sys_exit_{sc}"))
            self.links.append(enter.attach_tracepoint("syscalls", f"sys_enter_{sc}"))
            done.append(f"syscalls/{sc}")
        return done

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
        self._clear_slot("names", slot, lambda k: int.from_bytes(k[:4], "little"))

        cg = self.maps["cgroup_masks"]
        cg.update_batch(
            [
                (
                    struct.pack("<IIQ", slot, 0, cgid),
                    mask_bytes(parts.get("process", 0)) + mask_bytes(parts.get("file", 0)),
                )
                for cgid, parts in bundle["cgroups"].items()
            ]
        )
        for op, idx in OP_INDEX.items():
            self.maps["op_masks"].update(
                struct.pack("<I", slot * OP_SLOTS + idx), mask_bytes(bundle["ops"].get(op, 0))
            )
        for part, pidx in PART_INDEX.items():
            pm = bundle["parts"].get(part, {})  # type: ignore[call-overload]
            value = b"".join(
                mask_bytes(int(pm.get(f, 0)))
                for f in (
                    "any_path", "any_name", "requires_interactive", "requires_non_interactive",
                    "ignore_mounts", "ignore_files",
                )
            )  # fmt: skip
            self.maps["part_masks"].update(struct.pack("<I", slot * 2 + pidx), value)
            tables: PathTables = bundle["paths"].get(part, {})  # type: ignore[call-overload]
            tag = struct.pack("<I", slot << 8 | pidx)
            self.maps["exact_paths"].update_batch(
                [
                    (tag + _path_bytes(p, 256), mask_bytes(m))
                    for p, m in tables.get("exact", {}).items()
                ]
            )
            self.maps["child_paths"].update_batch(
                [
                    (tag + _path_bytes(p, 256), mask_bytes(m))
                    for p, m in tables.get("children", {}).items()
                ]
            )
            lpm = self.maps["recursive_paths"]
            for prefix, m in _fold_recursive(tables.get("recursive", {})).items():
                if len(prefix) > 255:
                    raise ValueError(f"recursive prefix too long: {prefix!r}")
                key = struct.pack("<IB", 8 * (1 + len(prefix)), slot << 4 | pidx)
                lpm.update(key + prefix.ljust(255, b"\0"), mask_bytes(m))
            rows = bundle["responses"].get(part, [])  # type: ignore[call-overload]
            if len(rows) > MAX_RESPONSES:
                raise ValueError(f"{part}: more than {MAX_RESPONSES} responses")
            base = (slot * 2 + pidx) * MAX_RESPONSES
            self.maps["responses"].update_batch(
                [
                    (
                        struct.pack("<I", base + i),
                        mask_bytes(match) + mask_bytes(exclude) + struct.pack("<IHH", act, pol, 0),
                    )
                    for i, (match, exclude, act, pol) in enumerate(rows)
                ]
            )
        names = []
        for name, m in bundle["names"].items():
            raw = name.encode()
            if len(raw) > 15:
                raise ValueError(f"process name longer than 15 bytes: {name!r}")
            names.append((struct.pack("<I", slot) + raw.ljust(16, b"\0"), mask_bytes(m)))
        self.maps["names"].update_batch(names)

        # counts and generation of this slot; the active slot is left as it is
        active, gens, counts = self._control()
        gens[slot] = bundle["generation"]
        counts[slot * 2 + 0] = len(bundle["responses"].get("process", []))
        counts[slot * 2 + 1] = len(bundle["responses"].get("file", []))
        self.maps["control"].update(b"\0" * 4, struct.pack("<IIQQ4I", active, 0, *gens, *counts))

    def activate(self, slot: int) -> None:
        """Flip the programs to `slot` (one u32 write)."""
        _, gens, counts = self._control()
        self.maps["control"].update(b"\0" * 4, struct.pack("<IIQQ4I", slot, 0, *gens, *counts))
        self._last_flip = time.monotonic()

    def reload(self, bundle: Bundle) -> int:
        """Write the inactive slot (after the grace delay since the last flip), then flip."""
        wait = self._last_flip + self.grace_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        slot = 1 - self.active_slot
        self.write_slot(slot, bundle)
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
