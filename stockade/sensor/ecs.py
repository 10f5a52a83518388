"""Ring-buffer records → the ECS documents the sensor writes (spec, "Events").

The record already carries the decision (matched-selector mask, actions, bundle
generation); this only names things: selector bits become the names of the bundle
that decided, cgroup ids become the listed container's facts.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import os
import platform
import socket
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

from stockade.policy.bundle import Bundle as PolicyBundle
from stockade.policy.model import PartName
from stockade.policy.tables import selector_names
from stockade.sensor.abi import ActionBits, Hook, RecordKind
from stockade.sensor.containers import Container
from stockade.sensor.records import FileRecord, Header, ProcessRecord

__all__ = ["Applied", "Document", "Host", "document", "serialize"]

Document = dict[str, Any]

# what orjson would write that json.dumps refuses is left to json.dumps (to refuse)
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def serialize(doc: Document) -> bytes:
    """`doc` as compact ASCII JSON: byte for byte `json.dumps(doc, separators=(",", ":"))`.

    orjson writes it ~8 times faster (documents hold no floats, which it writes
    differently). What it refuses or writes otherwise goes to json: the lone surrogates
    that undecodable path bytes decode to (as `\\udcff`), ints beyond 64 bits, non-ASCII
    (escaped as `\\u00e9`) and DEL (`\\u007f`).
    """
    try:
        out = orjson.dumps(doc, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        pass
    else:
        if out.isascii() and b"\x7f" not in out:
            return out
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Applied:
    """What one kernel generation was made from: needed to name what its records mean."""

    generation: int
    bundle: PolicyBundle
    containers: Mapping[int, Container]
    # what documents take from the bundle and the containers, made once per matched mask
    # and per container rather than per record (the documents share it: never mutated)
    named: dict[tuple[Any, ...], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def memo(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """make(), the first time `key` is asked for (a bounded cache)."""
        try:
            return self.named[key]
        except KeyError:
            if len(self.named) >= 4096:
                self.named.clear()
            value = self.named[key] = make()
            return value


ECS_VERSION = "8.10.0"  # the ECS reference of Elastic's cloud_defend package


@lru_cache(maxsize=1024)
def _iso_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_release() -> dict[str, str]:
    """ECS host.os.* from /etc/os-release (besides kernel and type)."""
    values: dict[str, str] = {}
    for line in _read("/etc/os-release").splitlines():
        key, _, value = line.partition("=")
        values[key] = value.strip().strip('"')
    ecs = {"name": values.get("NAME"), "full": values.get("PRETTY_NAME"),
           "version": values.get("VERSION"), "platform": values.get("ID"),
           "family": (values.get("ID_LIKE") or values.get("ID") or "").split(" ")[0],
           "codename": values.get("VERSION_CODENAME")}  # fmt: skip
    return {k: v for k, v in ecs.items() if v}


def _addresses() -> tuple[list[str], list[str]]:
    """This host's IP addresses (loopback aside) and MAC addresses (ECS: AA-BB-...)."""
    ips: set[str] = set()
    trie = _read("/proc/net/fib_trie").splitlines()
    for previous, line in itertools.pairwise(trie):
        if line.strip() == "/32 host LOCAL":
            ip = previous.strip().split()[-1]
            if not ip.startswith("127."):
                ips.add(ip)
    for line in _read("/proc/net/if_inet6").splitlines():
        raw, *_, name = line.split()
        if name != "lo" and not raw.startswith("fe80"):
            ips.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    macs = set()
    for net in Path("/sys/class/net").glob("*/address"):
        mac = _read(str(net)).upper().replace(":", "-")
        if mac and mac != "00-00-00-00-00-00":
            macs.add(mac)
    return sorted(ips), sorted(macs)


@dataclass(frozen=True)
class Host:
    """This host, and the offset from kernel monotonic time to wall-clock time."""

    name: str
    id: str
    boot_id: str
    architecture: str
    kernel: str
    boot_wall_ns: int  # wall-clock ns at monotonic 0
    os_release: Mapping[str, str] = field(default_factory=dict)  # ECS host.os.*
    ips: tuple[str, ...] = ()
    macs: tuple[str, ...] = ()
    pid_ns_ino: int = 0

    @classmethod
    def detect(cls) -> Host:
        ips, macs = _addresses()
        return cls(
            name=socket.gethostname(),
            id=_read("/etc/machine-id"),
            boot_id=_read("/proc/sys/kernel/random/boot_id"),
            architecture=platform.machine(),
            kernel=platform.release(),
            boot_wall_ns=time.time_ns() - time.monotonic_ns(),
            os_release=_os_release(),
            ips=tuple(ips),
            macs=tuple(macs),
            pid_ns_ino=os.stat("/proc/self/ns/pid").st_ino,
        )

    @cached_property
    def fields(self) -> Document:
        """The `host` and `agent` objects, the same in every document (never mutated)."""
        host: Document = {
            "name": self.name, "hostname": self.name, "id": self.id,
            "architecture": self.architecture,
            "os": {**self.os_release, "kernel": self.kernel, "type": "linux"},
        }  # fmt: skip
        if self.boot_id:
            host["boot"] = {"id": self.boot_id}
        if self.ips:
            host["ip"] = list(self.ips)
        if self.macs:
            host["mac"] = list(self.macs)
        if self.pid_ns_ino:
            host["pid_ns_ino"] = str(self.pid_ns_ino)
        agent = {"type": "stockade", "version": version("stockade"), "id": self.id,
                 "name": self.name}  # fmt: skip
        return {"host": host, "agent": agent, "ecs": {"version": ECS_VERSION}}

    def timestamp(self, ktime_ns: int) -> str:
        """ISO 8601 UTC with microseconds, from bpf_ktime_get_ns()/task start times."""
        seconds, ns = divmod(self.boot_wall_ns + ktime_ns, 1_000_000_000)
        return f"{_iso_seconds(seconds)}.{ns // 1000:06d}Z"

    def event_id(self, h: Header) -> str:
        """Deterministic per record (the `_id` that makes retries idempotent)."""
        key = f"{self.id}:{self.boot_id}:{h.ktime_ns}:{h.pid}:{h.kind}:{h.hook}".encode()
        return hashlib.sha256(key).hexdigest()[:32]

    def entity_id(self, pid: int, start_time_ns: int) -> str:
        """Stable for a process's life, unique across hosts (machine id) and reboots (boot id)."""
        key = f"{self.id}:{self.boot_id}:{pid}:{start_time_ns}".encode()
        return hashlib.sha256(key).hexdigest()[:32]


_FILE_ACTIONS = {
    "unlink": "deletion", "unlinkat": "deletion", "rename": "rename", "renameat": "rename",
    "renameat2": "rename", "link": "link", "linkat": "link", "chmod": "modification",
    "fchmod": "modification", "fchmodat": "modification", "fchmodat2": "modification",
    "truncate": "modification", "ftruncate": "modification", "mknod": "creation",
    "mknodat": "creation", "path_mknod": "creation", "path_unlink": "deletion",
    "path_rename": "rename", "path_link": "link", "path_chmod": "modification",
    "path_truncate": "modification", "file_truncate": "modification",
    "io_uring_unlinkat": "deletion",
    "io_uring_renameat": "rename", "io_uring_linkat": "link",
}  # fmt: skip
_ECS_TYPES = {
    "creation": "creation", "deletion": "deletion", "rename": "change", "link": "creation",
    "modification": "change", "open": "change", "fork": "start", "exec": "start", "end": "end",
}  # fmt: skip


_EXEC_HOOKS = (Hook.EXEC, Hook.LSM_BPRM_CHECK, Hook.FMODRET_BPRM_CHECK, Hook.EXEC_MAPPED,
               Hook.LSM_MMAP_FILE, Hook.FMODRET_MMAP_FILE)  # fmt: skip


def _file_action(rec: FileRecord) -> str:
    return _hook_file_action(rec.header.hook) or (
        "creation" if "createFile" in rec.ops else "open"  # the open family
    )


def _hook(hook: int) -> Hook | None:
    try:
        return Hook(hook)
    except ValueError:
        return None


@lru_cache(maxsize=256)  # per hook, not per record: Hook's properties cost µs
def _hook_file_action(hook: int) -> str | None:
    known = _hook(hook)
    point = known.point.removeprefix("security_") if known else ""  # fmodret: the LSM hook's
    return _FILE_ACTIONS.get(point)


@lru_cache(maxsize=256)
def _hook_point(hook: int) -> str:
    known = _hook(hook)
    return known.hook_point if known else str(hook)


_ACTIONS = (("log", int(ActionBits.LOG)), ("alert", int(ActionBits.ALERT)),
            ("block", int(ActionBits.BLOCK)))  # fmt: skip
_AUDIT_BLOCK = int(ActionBits.AUDIT_BLOCK)  # plain ints: IntFlag operations cost µs per record


def _action_names(bits: int) -> list[str]:
    return [name for name, bit in _ACTIONS if bits & bit]


def _policies(applied: Applied, part: PartName, mask: int) -> tuple[list[str], list[Any]]:
    """Matched selector names (bit order) and the policies they belong to."""
    names: list[str] = []
    policies: dict[int, Document] = {}
    for index, name in selector_names(applied.bundle, part, mask):
        names.append(name)
        p = applied.bundle.policies[index]
        entry = policies.setdefault(
            index,
            {
                "kind": p.kind,
                "namespace": p.namespace,
                "name": p.name,
                "uid": p.uid,
                "generation": p.generation,
                "mode": str(p.mode),
                "matched_selectors": [],
            },
        )
        entry["matched_selectors"].append(name)
    return names, list(policies.values())


def _container(container: Container) -> Document:
    c, k = container.container, container.kubernetes
    out: Document = {}
    image: Document = {}
    if c.image_name or c.image_full_name:  # Elastic writes the short name (`nginx`)
        image["name"] = c.image_name or c.image_full_name
    if c.image_tag:
        image["tag"] = [c.image_tag]
    ids = {key: v for key, v in (("id", c.id), ("name", c.name)) if v}
    out["container"] = {**ids, "image": image} if image else ids
    orch: Document = {}
    if k.cluster_id or k.cluster_name:
        orch["cluster"] = {
            key: v for key, v in (("id", k.cluster_id), ("name", k.cluster_name)) if v
        }
    if k.namespace:
        orch["namespace"] = k.namespace
    if k.pod_name or k.pod_labels or k.pod_annotations or k.pod_ip or k.pod_owner_kind:
        resource: Document = {"type": "pod"}
        if k.pod_name:
            resource["name"] = k.pod_name
        if k.pod_labels:
            resource["label"] = [f"{key}:{v}" for key, v in sorted(k.pod_labels.items())]
        if k.pod_annotations:
            resource["annotation"] = [f"{key}:{v}" for key, v in sorted(k.pod_annotations.items())]
        if k.pod_ip:
            resource["ip"] = [k.pod_ip]
        if k.pod_owner_kind:
            resource["parent"] = {"type": k.pod_owner_kind}
        orch["resource"] = resource
    if orch:
        orch["type"] = "kubernetes"
        out["orchestrator"] = orch
    return out


def _process(rec: ProcessRecord | FileRecord, host: Host) -> Document:
    h = rec.header
    proc: Document = {
        "pid": h.tgid,
        "thread": {"id": h.pid},
        "parent": {"pid": h.ppid},
        "user": {"id": str(h.uid)},
        "group": {"id": str(h.gid)},
        "name": rec.comm,
    }
    if isinstance(rec, ProcessRecord):
        proc["entity_id"] = host.entity_id(h.tgid, rec.start_time_ns)
        proc["start"] = host.timestamp(rec.start_time_ns)
        proc["parent"]["entity_id"] = host.entity_id(h.ppid, rec.parent_start_time_ns)
        proc["session_leader"] = {"pid": rec.sid}
        proc["group_leader"] = {"pid": rec.pgid}
        proc["interactive"] = rec.interactive
        if rec.interactive:
            proc["tty"] = {"char_device": {"major": rec.tty_major, "minor": rec.tty_index}}
        if rec.executable:
            proc["executable"] = rec.executable
        if rec.cwd:
            proc["working_directory"] = rec.cwd
        if rec.args:
            proc["args"] = rec.args
            proc["args_count"] = len(rec.args)
            proc["command_line"] = " ".join(rec.args)
        if h.kind == RecordKind.EXIT:
            code = rec.exit_code
            proc["exit_code"] = 128 + (code & 0x7F) if code & 0x7F else code >> 8
            proc["end"] = host.timestamp(h.ktime_ns)
    return proc


def _file(rec: FileRecord) -> Document:
    directory, _, name = rec.path.rpartition("/")
    out: Document = {
        "path": rec.path,
        "name": name,
        "directory": directory or "/",
        "type": "file",
    }
    if "." in name.strip("."):
        out["extension"] = name.rsplit(".", 1)[1]
    if rec.mode:
        out["mode"] = format(stat.S_IMODE(rec.mode), "04o")
    return out


def document(
    rec: ProcessRecord | FileRecord, applied: Applied | None, mode: str, host: Host
) -> Document:
    """The ECS document for one record; `applied` is the generation that decided it."""
    h = rec.header
    part: PartName = "file" if isinstance(rec, FileRecord) else "process"
    if isinstance(rec, FileRecord):
        action = _file_action(rec)
    elif h.kind == RecordKind.EXIT:
        action = "end"
    else:
        action = "exec" if h.hook in _EXEC_HOOKS else "fork"
    actions = _action_names(h.actions)
    types = [_ECS_TYPES[action]]
    if h.outcome == "denied":
        types.append("denied")
    selectors, policies = (
        applied.memo((part, h.matched), lambda: _policies(applied, part, h.matched))
        if applied
        else ([], [])
    )
    first = policies[0] if policies else None
    doc: Document = {
        "@timestamp": host.timestamp(h.ktime_ns),
        "event": {
            "id": host.event_id(h),
            "kind": "alert" if "alert" in actions else "event",
            "created": host.timestamp(time.monotonic_ns()),
            "category": [part],
            "action": action,
            "type": types,
            "module": "cloud_defend",
        },
        "process": _process(rec, host),
        **host.fields,
        "user": {"id": str(h.uid)},
        "group": {"id": str(h.gid)},
        "cloud_defend": {
            "matched_selectors": selectors,
            "policies": policies,
            "package_policy_id": (first["uid"] or first["name"]) if first else None,
            "package_policy_revision": first["generation"] if first else None,
            "hook_point": _hook_point(h.hook),
            "actions": actions,
            "would_block": bool(h.actions & _AUDIT_BLOCK),
            "outcome": h.outcome,
            "enforcement_mode": mode,
            "bundle_generation": h.generation,
            "bundle_hash": applied.bundle.hash if applied else None,
            "cgroup_id": h.cgroup_id,
            "mount_namespace": h.mntns,
        },
    }
    if isinstance(rec, FileRecord):
        doc["file"] = _file(rec)
        doc["cloud_defend"]["file_operations"] = sorted(rec.ops)
        doc["cloud_defend"]["volume"] = rec.volume
        for flag in ("other_name", "names_unknown", "path_swapped"):  # docs/kernel.md, "Attacks"
            if getattr(rec, flag):
                doc["cloud_defend"][flag] = True
    if rec.executable_truncated if isinstance(rec, ProcessRecord) else rec.path_truncated:
        doc["cloud_defend"]["path_truncated"] = True  # a path's tail: decided fail-closed
    if isinstance(rec, ProcessRecord) and rec.executable_fileless:
        doc["cloud_defend"]["fileless"] = True  # a memfd or deleted executable
    if applied is not None and (listed := applied.containers.get(h.cgroup_id)) is not None:
        # checked by identity: the node's mapping is live (a container's facts replaced)
        made, fields = applied.memo(
            ("container", h.cgroup_id), lambda: (listed, _container(listed))
        )
        if made is not listed:
            fields = _container(listed)
            applied.named["container", h.cgroup_id] = (listed, fields)
        doc.update(fields)
    return doc
