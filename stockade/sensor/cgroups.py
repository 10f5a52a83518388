"""A node's pod and container cgroups, as kubelets and CRI runtimes name them (docs/containers.md).

`parse` reads one cgroup v2 path (relative to the hierarchy's root, as the kernel's
`cgroup_mkdir` tracepoint or a walk gives it); `scan` walks a mounted hierarchy; `v2_root`
finds where the hierarchy is mounted. The grammar is strict: a name the kubelet or the
runtime would not have written, or a kubepods-shaped tree below a container's own cgroup,
is not a pod or a container.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

__all__ = ["CgroupScanError", "KubeCgroup", "parse", "pod_cgroup_names", "scan", "v2_root"]

MAX_PATH = 1000  # a kubelet path is under 300; cgroup_mkdir truncates at 1023 characters
MAX_NAME = 255  # NAME_MAX
MAX_PREFIX = 8  # components of the kubelet's --cgroup-root we accept before kubepods
# prefix, kubepods, QoS class, pod, container: no kubelet cgroup lies deeper.
MAX_DEPTH = MAX_PREFIX + 4

_HEX = "[0-9a-f]"
_ID = rf"{_HEX}{{64}}"
# A pod UID as the API writes it, or a static pod's (the md5 hex of its manifest,
# kubelet pkg/kubelet/config/common.go); the mirror pod's annotation
# kubernetes.io/config.mirror carries the latter.
_UID = rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|{_HEX}{{32}}"
_POD = re.compile(rf"pod({_UID})")
_CGROUPFS_CONTAINER = re.compile(rf"(crio-)?({_ID})")
_SCOPE = re.compile(rf"(cri-containerd|crio|docker)-({_ID})\.scope")
# A --cgroup-root level: no "." (so no systemd unit, such as a user's delegated
# user@UID.service, can lie above kubepods).
_ROOT_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_SLICE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}")
_RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}
_QOS = {"burstable": "Burstable", "besteffort": "BestEffort"}


class CgroupScanError(Exception):
    """A walk stopped before the end; the message names the root and the bound."""


@dataclass(frozen=True)
class KubeCgroup:
    """A pod's cgroup (container_id None) or one of its containers' cgroups.

    pod_uid is the pod's metadata.uid (lowercase); container_id the hex after
    "<runtime>://" in the pod status' containerID; runtime is None when the name does
    not say (the cgroupfs driver's bare ids); qos is status.qosClass.
    """

    pod_uid: str
    container_id: str | None
    runtime: str | None
    qos: str


class _Kind(Enum):
    DEAD = 0  # neither a kubelet cgroup nor on the way to one
    PREFIX = 1  # on the way: the --cgroup-root, kubepods or a QoS class
    POD = 2
    CONTAINER = 3


def parse(path: str) -> KubeCgroup | None:
    """The pod or container this cgroup path is, or None for anything else."""
    kind, result = _match(path)
    return result if kind in (_Kind.POD, _Kind.CONTAINER) else None


def _match(path: str) -> tuple[_Kind, KubeCgroup | None]:
    if not isinstance(path, str) or not path.startswith("/") or len(path) > MAX_PATH:
        return _Kind.DEAD, None
    if path == "/":
        return _Kind.PREFIX, None
    parts = path[1:].split("/")
    if any(not p or len(p) > MAX_NAME or p in (".", "..") or "\0" in p for p in parts):
        return _Kind.DEAD, None
    # The systemd driver's paths are slices from the root down, the cgroupfs driver's never.
    return _match_systemd(parts) if parts[0].endswith(".slice") else _match_cgroupfs(parts)


def _pod(levels: list[str]) -> tuple[_Kind, KubeCgroup | None, list[str]]:
    """[root...]/kubepods/[burstable|besteffort/]pod<uid>, in either driver's levels.

    Returns the pod (or how far from one the levels are) and the levels below it.
    """
    if "kubepods" not in levels:
        ok = len(levels) <= MAX_PREFIX and all(_ROOT_PART.fullmatch(p) for p in levels)
        return (_Kind.PREFIX if ok else _Kind.DEAD), None, []
    anchor = levels.index("kubepods")  # the first: a tree below a container is not a pod
    if anchor > MAX_PREFIX or not all(_ROOT_PART.fullmatch(p) for p in levels[:anchor]):
        return _Kind.DEAD, None, []
    rest = levels[anchor + 1 :]
    qos = "Guaranteed"
    if rest and rest[0] in _QOS:
        qos = _QOS[rest.pop(0)]
    if not rest:
        return _Kind.PREFIX, None, []
    pod = _POD.fullmatch(rest[0])
    if pod is None:
        return _Kind.DEAD, None, []
    return _Kind.POD, KubeCgroup(pod[1], None, None, qos), rest[1:]


def _match_cgroupfs(parts: list[str]) -> tuple[_Kind, KubeCgroup | None]:
    """The pod's directory, then the container's: its bare id, or crio-<id> from CRI-O."""
    kind, pod, below = _pod(parts)
    if pod is None or not below:
        return kind, pod
    container = _CGROUPFS_CONTAINER.fullmatch(below[0])
    if container is None or len(below) > 1:
        return _Kind.DEAD, None
    runtime = "cri-o" if container[1] else None
    return _Kind.CONTAINER, replace(pod, container_id=container[2], runtime=runtime)


def _match_systemd(parts: list[str]) -> tuple[_Kind, KubeCgroup | None]:
    """Slices expanded as systemd does (a.slice/a-b.slice/a-b-c.slice), then a runtime's scope.

    The kubelet writes "-" in its names as "_" (a "-" is a level to systemd), so
    <P>kubepods-burstable-pod<uid with _>.slice is the levels [<P>..., kubepods, burstable,
    pod<uid>]; runc names the container's scope <prefix>-<id>.scope.
    """
    leaf = parts[-1] if parts[-1].endswith(".scope") else None
    stem = ""  # the slice's name without ".slice": its parent's stem, "-", its own level
    levels = []
    for part in parts[:-1] if leaf else parts:
        if not part.endswith(".slice"):
            return _Kind.DEAD, None
        name = part[: -len(".slice")]
        own = name[len(stem) + 1 :] if stem else name
        if (stem and not name.startswith(stem + "-")) or not _SLICE_PART.fullmatch(own):
            return _Kind.DEAD, None
        stem = name
        levels.append(own.replace("_", "-"))
    kind, pod, below = _pod(levels)
    if leaf is None:
        return (kind, pod) if not below else (_Kind.DEAD, None)
    scope = _SCOPE.fullmatch(leaf)
    if pod is None or below or scope is None:
        return _Kind.DEAD, None
    return _Kind.CONTAINER, replace(pod, container_id=scope[2], runtime=_RUNTIMES[scope[1]])


def pod_cgroup_names(pod_uid: str) -> tuple[str, ...]:
    """The names a kubelet with the default --cgroup-root gives the cgroup of the pod whose
    cgroups carry `pod_uid`, under either driver and any QoS class (none for a uid no
    kubelet writes)."""
    if not re.fullmatch(_UID, pod_uid):
        return ()
    slice_uid = pod_uid.replace("-", "_")
    qos_levels = ("", "burstable-", "besteffort-")
    return (f"pod{pod_uid}", *(f"kubepods-{q}pod{slice_uid}.slice" for q in qos_levels))


def scan(root: Path, max_entries: int = 100_000) -> Iterator[tuple[int, str, KubeCgroup]]:
    """(cgroup id, path from root, what it is) for each pod and container cgroup under root.

    Depth-first, so a pod comes before its containers; descends only where a kubelet
    cgroup can still lie, never follows a symlink, and skips a directory that vanishes
    while it is read. Raises CgroupScanError after max_entries directories, OSError if
    root can't be read.
    """
    seen = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        children = []
        try:
            with os.scandir(root / rel.lstrip("/")) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        seen += 1
                        if seen > max_entries:
                            raise CgroupScanError(
                                f"{root}: scan stopped after {max_entries} directories"
                            )
                        children.append(entry)
        except (FileNotFoundError, NotADirectoryError):
            if not rel:
                raise  # the root itself: the caller named the wrong directory
            continue  # removed while we walked
        below = []
        for entry in sorted(children, key=lambda e: e.name):
            child = f"{rel}/{entry.name}"
            kind, found = _match(child)
            if found is not None:
                try:
                    cgroup_id = entry.stat(follow_symlinks=False).st_ino
                except FileNotFoundError:
                    continue
                yield cgroup_id, child, found
            if kind in (_Kind.PREFIX, _Kind.POD) and child.count("/") < MAX_DEPTH:
                below.append(child)
        stack.extend(reversed(below))


def v2_root(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where the cgroup2 filesystem is mounted: /sys/fs/cgroup, else .../unified, else any."""
    points = []
    for line in mountinfo.read_text(errors="replace").splitlines():
        # id parent major:minor root mount-point options [optional...] - fstype source ...
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if sep + 1 < len(fields) and fields[sep + 1] == "cgroup2":
            points.append(_unescape(fields[4]))
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if preferred in points:
            return Path(preferred)
    return Path(points[0]) if points else None


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)
