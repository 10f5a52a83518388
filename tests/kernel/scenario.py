"""The standalone path as a test harness: policy YAML → bundle → maps → real processes → JSONL.

`Harness` drives `Standalone` in-process on the session's sensor; `driver.py` performs a list
of operations for real; `predict` says, from the same operations and `PartTables.decide`,
which documents the kernel must produce. Every mode uses them: kill mode here, lsm and fmodret
modes in the test VM (tests/vm), where `kernel_operations` and `predict` follow the LSM hooks.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stockade.policy.model import PartName
from stockade.policy.tables import (
    Operation,
    PartTables,
    container_masks,
    selector_names,
)
from stockade.sensor.abi import ActionBits
from stockade.sensor.ecs import Applied
from stockade.sensor.kernel import KillSensor
from stockade.sensor.output import JsonlOutput
from stockade.sensor.standalone import Standalone
from stockade.sensor.state import StateDir

from .conftest import Cgroup

PY = os.path.realpath(sys.executable)  # run by its real path: exe and comm are known
PY_COMM = os.path.basename(PY)[:15]
DRIVER = Path(__file__).with_name("driver.py")
Op = list[Any]  # ["create", path, mode], ["exec", path], ... (see driver.py)
Doc = dict[str, Any]
# (category, path, matched selector names, actions, would_block, outcome)
Outcome = tuple[str, str, tuple[str, ...], tuple[str, ...], bool, str]

# what the record of a blocked operation says: killed after it (kill), EPERM before it (lsm,
# fmodret)
BLOCKED_OUTCOME = {"kill": "killed", "lsm": "denied", "fmodret": "denied"}
# kill mode: a name given by rename or link by path is decided again as createExecutable,
# outcome `pending` (user space reads the mode; the harness reads records after the process
# is gone, so they stay pending), unless the name's own decision blocked
PENDING = {"createExecutable"}

TINY_C = 'void _start(void){__asm__ volatile("mov $60,%eax\\n xor %edi,%edi\\n syscall");}\n'


def build_tiny(directory: Path) -> Path:
    """A static binary of a few KB that exits 0 at once (no loader, no libc)."""
    src, out = directory / "tiny.c", directory / "tiny"
    src.write_text(TINY_C)
    subprocess.run(["gcc", "-static", "-nostdlib", "-O2", "-o", str(out), str(src)], check=True)
    return out


def driver_argv(ops: Sequence[Op]) -> list[str]:
    return [PY, "-S", "-B", str(DRIVER), json.dumps(list(ops))]


def kernel_operations(
    ops: Sequence[Op],
    cwd: str,
    modes: dict[str, int],
    volume_of: Callable[[str], str],
    mode: str = "kill",
) -> list[tuple[PartName, Operation]]:
    """What the kernel sees of the driver's operations, in order, as `Operation`s.

    Starts with the driver's own exec. `modes` (path → mode) is the model of the files,
    updated as operations run; `volume_of` gives the volume kind of a path's mount. The
    operation sets are `mode`'s hooks' (docs/kernel.md). kill: a path-string syscall's
    volume is that of the cwd for a relative path and `none` for an absolute one. lsm: the
    hooks see the target's own mount, and ftruncate reaches `path_truncate` (modifyFile
    only, as a truncate by path).
    """
    lsm = mode in ("lsm", "fmodret")  # the same hooks, as LSM hooks or security_* functions

    def proc(op: str, path: str) -> tuple[PartName, Operation]:
        name = os.path.basename(path)[:15] if op == "exec" else PY_COMM
        return "process", Operation(frozenset({op}), path=path, name=name, interactive=False)

    def file(ops: set[str], path: str, volume: str) -> tuple[PartName, Operation]:
        return "file", Operation(frozenset(ops), path=path, volume=volume)

    def string_volume(raw: str, path: str) -> str:
        if lsm:
            return volume_of(path)
        return "none" if raw.startswith("/") else volume_of(cwd)

    # a file's names (hard links), newest first as the kernel's alias list has them: a
    # change of the file through a hook that has its inode is decided under each
    names: dict[str, list[str]] = {}

    def others(path: str, ops: set[str], inode_known: bool) -> list[tuple[PartName, Operation]]:
        if not inode_known:
            return []
        return [file(ops, n, volume_of(n)) for n in names.get(path, []) if n != path]

    out = [proc("exec", PY)]
    for op in ops:
        kind, raw = op[0], op[1]
        path = os.path.normpath(os.path.join(cwd, raw))
        x = bool(modes.get(path, 0) & 0o111)
        if kind == "chdir":
            cwd = path
        elif kind == "exec":
            out += [proc("fork", PY), proc("exec", os.path.realpath(path))]
        elif kind == "create":
            modes[path] = op[2]
            created = {"createFile"} | ({"createExecutable"} if op[2] & 0o111 else set())
            out.append(file(created, path, volume_of(path)))
        elif kind in ("modify", "ftruncate"):
            modified = {"modifyFile"} | ({"modifyExecutable"} if x else set())
            out += [file(modified, path, volume_of(path)), *others(path, modified, True)]
            if kind == "ftruncate":
                truncated = {"modifyFile"} if lsm else modified
                out += [file(truncated, path, volume_of(path)), *others(path, truncated, True)]
        elif kind == "chmod":
            for n in names.get(path, [path]):
                modes[n] = op[2]
            changed = {"modifyFile"} | ({"createExecutable"} if op[2] & 0o111 else set())
            out += [file(changed, path, string_volume(raw, path)), *others(path, changed, lsm)]
        elif kind in ("rename", "link"):
            target = os.path.normpath(os.path.join(cwd, op[2]))
            modes[target] = modes[path]
            linked_before = names.pop(path, [path])
            if kind == "rename":
                del modes[path]
                group = [target if n == path else n for n in linked_before]
            else:
                group = [target, *linked_before]
            if len(group) > 1:
                for n in group:
                    names[n] = group
            ops_ = (
                {"createFile", "modifyFile", "deleteFile"} if kind == "rename" else {"createFile"}
            )
            if lsm and x:  # the hook knows the file's mode: a new name for an executable
                ops_.add("createExecutable")
            out.append(file(ops_, target, string_volume(op[2], target)))
            if kind == "rename":  # the old name is gone
                out.append(file({"deleteFile"}, path, string_volume(raw, path)))
            else:  # the file linked is changed (kill mode: by path, its mode and names unknown)
                linked = {"modifyFile"} | ({"modifyExecutable"} if lsm and x else set())
                out.append(file(linked, path, string_volume(raw, path)))
                if lsm:
                    out += [file(linked, n, volume_of(n)) for n in linked_before if n != path]
            if not lsm:  # the new name's createExecutable, for user space to settle: PENDING
                out.append(file(PENDING, target, string_volume(op[2], target)))
        elif kind == "truncate":
            out += [
                file({"modifyFile"}, path, string_volume(raw, path)),
                *others(path, {"modifyFile"}, lsm),
            ]
        elif kind == "delete":
            del modes[path]
            group = names.pop(path, [])
            if path in group:
                group.remove(path)
            if len(group) == 1:
                names.pop(group[0], None)
            out.append(file({"deleteFile"}, path, string_volume(raw, path)))
    return out


def _action_names(actions: ActionBits) -> tuple[str, ...]:
    return tuple(
        n for n, b in (("log", ActionBits.LOG), ("alert", ActionBits.ALERT),
                       ("block", ActionBits.BLOCK)) if b in actions
    )  # fmt: skip


def predict(
    applied: Applied,
    cgroup_id: int,
    operations: Sequence[tuple[PartName, Operation]],
    mode: str = "kill",
) -> list[Outcome]:
    """The documents the table interpreter says the kernel must write, in order, in `mode`."""
    masks = container_masks(applied.bundle, applied.containers[cgroup_id].workload)
    tables = {p: PartTables.from_bundle(applied.bundle, p) for p in ("process", "file")}
    out: list[Outcome] = []
    blocked: set[str] = set()  # paths a block acted on
    for part, op in operations:
        pending = op.operations == PENDING and mode == "kill"
        if pending and op.path in blocked:
            continue
        mask, actions = tables[part].decide(masks[part], op)
        if not actions:
            continue
        blocked_or_allowed = "allowed"
        if ActionBits.BLOCK in actions:
            blocked.add(op.path or "")
            blocked_or_allowed = BLOCKED_OUTCOME[mode]
        names = tuple(n for _, n in selector_names(applied.bundle, part, mask))
        out.append(
            (
                part,
                op.path or "",
                names,
                _action_names(actions),
                ActionBits.AUDIT_BLOCK in actions,
                "pending" if pending else blocked_or_allowed,
            )
        )
    return out


def outcome(doc: Doc) -> Outcome:
    """The same tuple, read from a written document."""
    cd = doc["cloud_defend"]
    part = doc["event"]["category"][0]
    path = doc["file"]["path"] if part == "file" else doc["process"].get("executable", "")
    return (
        part,
        path,
        tuple(cd["matched_selectors"]),
        tuple(cd["actions"]),
        cd["would_block"],
        cd["outcome"],
    )


@dataclass
class Harness:
    """Standalone mode on the session's sensor, writing into memory."""

    sensor: KillSensor
    directory: Path

    @property
    def mode(self) -> str:
        """The sensor's enforcement mode (kill here; tests/vm: lsm, fmodret)."""
        return self.sensor.MODE

    def __post_init__(self) -> None:
        self.policy = self.directory / "policy.yaml"
        self.containers = self.directory / "containers.json"
        self.out = io.StringIO()
        self.log = io.StringIO()
        self.sa: Standalone | None = None

    def apply(
        self, policies: str | Sequence[Mapping[str, Any]], containers: Mapping[Cgroup, Any]
    ) -> Applied:
        """Write both files and apply them; fails the test when they are refused."""
        text = policies if isinstance(policies, str) else yaml.safe_dump_all(list(policies))
        self.policy.write_text(text)
        self.containers.write_text(json.dumps({str(cg.path): v for cg, v in containers.items()}))
        if self.sa is None:
            self.sa = Standalone(
                self.sensor, self.policy, self.containers, JsonlOutput(self.out), self.mode,
                state=StateDir(self.directory / "state"), log=self.log,
            )  # fmt: skip
        assert self.sa.apply(), self.log.getvalue()
        return self.sa.generations[self.sa.generation].applied

    def docs(self) -> list[Doc]:
        """Documents written since the last call (waits for the stream to go quiet), in the
        order they happened (alerts come from their own ring buffer, ahead of the rest)."""
        assert self.sa is not None
        while self.sa.pump(150):
            pass
        lines = self.out.getvalue().splitlines()
        self.out.seek(0)
        self.out.truncate()
        return sorted((json.loads(line) for line in lines), key=lambda d: str(d["@timestamp"]))

    def run(
        self, argv: list[str], cg: Cgroup | None, **kw: Any
    ) -> tuple[subprocess.CompletedProcess[str], list[Doc]]:
        """Run argv (in cg when given, in a new session: no controlling tty); its documents,
        process ends left out."""
        self.docs()
        res = subprocess.run(
            argv, preexec_fn=cg.join() if cg else None, start_new_session=True,
            capture_output=True, text=True, check=False, **kw,
        )  # fmt: skip
        return res, [d for d in self.docs() if d["event"]["action"] != "end"]

    def close(self) -> None:
        if self.sa is not None:
            self.sa.close()


def regular_volume(_path: str) -> str:
    """Volume kind of every path outside the mount-namespace scenario."""
    return "none"


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_volume(path: str) -> str:
    """The volume kind of the mount `path` lies on (its longest mount point in this mount
    namespace): `none` on the root mount, `file` for a bind-mounted single file, else `mount`
    (e.g. the test VM's tmpfs /var/tmp)."""
    points = [
        _unescape(line.split()[4]) for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]
    inside = [p for p in points if path == p or path.startswith(p.rstrip("/") + "/")]
    point = max(inside, key=len, default="/")
    if point == "/":
        return "none"
    return "file" if os.path.isfile(point) else "mount"
