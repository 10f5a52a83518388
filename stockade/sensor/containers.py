"""The standalone sensor's containers file: cgroup v2 directory → what is known of its container.

```json
{"/sys/fs/cgroup/unified/kubepods/pod1/ctr1": {
    "container": {"imageFullName": "docker.io/library/nginx", "imageName": "nginx"},
    "kubernetes": {"namespace": "shop", "podName": "web-1", "podLabels": {"app": "web"}}}}
```

The values are the `container` and `kubernetes` objects of `stockade explain`'s event JSON;
for the documents only, `container` also takes `id` and `name`, `kubernetes` takes
`podAnnotations`, `podIp` and `podOwnerKind` (docs/elasticsearch.md).
A cgroup's id is its directory's inode (what `bpf_get_current_cgroup_id()` returns). Cgroups
below a listed one are covered by the kernel, which looks up the deepest listed ancestor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from stockade.policy.evaluator import ContainerFacts, Event, KubernetesFacts
from stockade.policy.predicates import Workload
from stockade.policy.source import SourceError, format_path, read_json

__all__ = [
    "Container",
    "ContainersError",
    "dump_containers",
    "load_containers",
    "namespace_labels",
    "restore_containers",
]


class ContainersError(Exception):
    """The containers file can't be used; the message names the file and the problem."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    container: ContainerFacts = ContainerFacts()
    kubernetes: KubernetesFacts = KubernetesFacts()


@dataclass(frozen=True)
class Container:
    """One listed cgroup and what is known of the container in it."""

    cgroup_path: str
    cgroup_id: int
    container: ContainerFacts
    kubernetes: KubernetesFacts

    @property
    def workload(self) -> Workload:
        """The facts as the policy's container-level conditions read them (as in `explain`)."""
        event = Event(
            part="process", operation="exec", container=self.container, kubernetes=self.kubernetes
        )
        return event.workload()


def load_containers(path: Path) -> dict[int, Container]:
    """cgroup id → container; raises ContainersError on any problem (nothing half-read)."""
    try:
        doc = read_json(path)
    except SourceError as exc:
        raise ContainersError(str(exc)) from None
    data = doc.data
    if not isinstance(data, dict):
        raise ContainersError(f"{path}: must be a JSON object of cgroup directory → container")
    out: dict[int, Container] = {}
    for cgroup, value in data.items():
        try:
            entry = _Entry.model_validate(value)
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = (cgroup, *(p for p in error["loc"] if isinstance(p, str | int)))
            message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
            raise ContainersError(
                f"{path}: {format_path(loc)}: {message} (line {doc.line_of(loc)})"
            ) from None
        directory = Path(cgroup)
        try:
            # cgroup.controllers exists only in cgroup v2 directories
            if not directory.is_absolute() or not (directory / "cgroup.controllers").is_file():
                raise ContainersError(f"{path}: {cgroup!r}: not a cgroup v2 directory")
            cgroup_id = os.stat(directory).st_ino
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte, ...
            why = getattr(exc, "strerror", None) or exc
            raise ContainersError(
                f"{path}: {cgroup!r}: not a cgroup v2 directory ({why})"
            ) from None
        if cgroup_id in out:
            raise ContainersError(f"{path}: {cgroup}: same cgroup as {out[cgroup_id].cgroup_path}")
        out[cgroup_id] = Container(cgroup, cgroup_id, entry.container, entry.kubernetes)
    return out


def namespace_labels(containers: Mapping[int, Container]) -> dict[str, dict[str, str]]:
    """Namespace → labels, from the containers that say (for namespaceSelector scopes)."""
    labels: dict[str, dict[str, str]] = {}
    for c in containers.values():
        k = c.kubernetes
        if k.namespace is not None and k.namespace_labels is not None:
            labels[k.namespace] = dict(k.namespace_labels)
    return labels


def dump_containers(containers: Mapping[int, Container]) -> dict[str, dict[str, object]]:
    """The containers as JSON data, keyed by cgroup id (as applied: ids are not looked up
    again), for `restore_containers`."""
    return {
        str(cgid): {
            "cgroup": c.cgroup_path,
            "container": c.container.model_dump(mode="json", by_alias=True, exclude_none=True),
            "kubernetes": c.kubernetes.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        for cgid, c in containers.items()
    }


def restore_containers(data: Mapping[str, Mapping[str, object]]) -> dict[int, Container]:
    """What `dump_containers` wrote (ValueError, KeyError or TypeError if it isn't)."""
    return {
        int(cgid): Container(
            str(entry["cgroup"]),
            int(cgid),
            ContainerFacts.model_validate(entry["container"]),
            KubernetesFacts.model_validate(entry["kubernetes"]),
        )
        for cgid, entry in data.items()
    }
