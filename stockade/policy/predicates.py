"""What one condition value means, straight from the spec.

Used by the reference evaluator for every condition, and by the sensor (via
`tables.container_masks`) for the container-level conditions it evaluates
once per container. The compiler turns path patterns into lookup tables
instead; `PathPattern.parse` is the single reading of the pattern syntax.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from stockade.policy.model import ContainerCondition


class PatternKind(StrEnum):
    EXACT = "exact"  # /usr/bin/echo: that path
    CHILDREN = "children"  # /usr/sbin/*: direct children of /usr/sbin
    RECURSIVE = "recursive"  # /usr/local/**: anything below /usr/local


@dataclass(frozen=True)
class PathPattern:
    kind: PatternKind
    path: str  # the file (EXACT) or the directory (CHILDREN, RECURSIVE)

    @classmethod
    def parse(cls, pattern: str) -> PathPattern:
        head, last = posixpath.split(pattern)
        if last == "*":
            return cls(PatternKind.CHILDREN, head)
        if last == "**":
            return cls(PatternKind.RECURSIVE, head)
        return cls(PatternKind.EXACT, pattern)

    def matches(self, path: str) -> bool:
        match self.kind:
            case PatternKind.EXACT:
                return path == self.path
            case PatternKind.CHILDREN:
                return path != "/" and parent_dir(path) == self.path
            case PatternKind.RECURSIVE:
                below = self.path.rstrip("/") + "/"
                return path != self.path and path.startswith(below)


def parent_dir(path: str) -> str:
    """The directory holding `path` ("/" for a top-level name)."""
    return posixpath.dirname(path)


def canonical_path_problem(path: str) -> str | None:
    """Why `path` is not an absolute path as the kernel reports it, or None."""
    if not path.startswith("/"):
        return "must be absolute"
    if path != "/" and path.endswith("/"):
        return "must not end in '/'"
    if any(part in ("", ".", "..") for part in path.split("/")[1:]) and path != "/":
        return "must not contain empty, '.' or '..' components"
    return None


def pod_name_matches(value: str, pod_name: str) -> bool:
    if value.endswith("*"):
        return pod_name.startswith(value[:-1])
    return pod_name == value


def pod_label_matches(value: str, labels: dict[str, str]) -> bool:
    key, _, wanted = value.partition(":")
    if key not in labels:
        return False
    if wanted.endswith("*"):
        return labels[key].startswith(wanted[:-1])
    return labels[key] == wanted


@dataclass(frozen=True)
class Workload:
    """What is known of a container and its pod; None where a fact is unknown."""

    image_full_name: str | None = None
    image_name: str | None = None
    image_tag: str | None = None
    cluster_id: str | None = None
    cluster_name: str | None = None
    namespace: str | None = None
    pod_name: str | None = None
    pod_labels: dict[str, str] | None = None
    namespace_labels: dict[str, str] | None = field(default=None, compare=False)


def container_conditions_hold(
    conditions: Mapping[ContainerCondition, Sequence[str]], workload: Workload
) -> bool:
    """Whether every container-level condition holds (values inside one are ORed).

    A condition whose fact is unknown does not hold.
    """
    for condition, values in conditions.items():
        if not _condition_holds(condition, values, workload):
            return False
    return True


def _condition_holds(condition: str, values: Sequence[str], w: Workload) -> bool:
    exact = {
        "containerImageFullName": w.image_full_name,
        "containerImageName": w.image_name,
        "containerImageTag": w.image_tag,
        "kubernetesClusterId": w.cluster_id,
        "kubernetesClusterName": w.cluster_name,
        "kubernetesNamespace": w.namespace,
    }
    if condition in exact:
        fact = exact[condition]
        return fact is not None and fact in values
    if condition == "kubernetesPodName":
        name = w.pod_name
        return name is not None and any(pod_name_matches(v, name) for v in values)
    if condition == "kubernetesPodLabel":
        labels = w.pod_labels
        return labels is not None and any(pod_label_matches(v, labels) for v in values)
    raise ValueError(f"{condition} is not a container-level condition")
