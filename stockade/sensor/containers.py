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

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from stockade.policy.evaluator import ContainerFacts, Event, KubernetesFacts
from stockade.policy.loader import format_path
from stockade.policy.predicates import Workload

__all__ = ["Container", "ContainersError", "load_containers", "namespace_labels"]


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
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ContainersError(f"{path}: can't read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ContainersError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ContainersError(
            f"{path}: line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ContainersError(f"{path}: must be a JSON object of cgroup directory → container")
    out: dict[int, Container] = {}
    for cgroup, value in data.items():
        try:
            entry = _Entry.model_validate(value)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = format_path((cgroup, *(p for p in error["loc"] if isinstance(p, str | int))))
            message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
            raise ContainersError(f"{path}: {where}: {message}") from None
        directory = Path(cgroup)
        # cgroup.controllers exists only in cgroup v2 directories
        if not directory.is_absolute() or not (directory / "cgroup.controllers").is_file():
            raise ContainersError(f"{path}: {cgroup}: not a cgroup v2 directory")
        cgroup_id = os.stat(directory).st_ino
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
