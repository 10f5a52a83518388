"""The node's containers: its pods (from the apiserver) joined to their cgroups (from the kernel).

A pod is known from the pod watch (bound to this node); a cgroup from the kernel's
cgroup_mkdir records and a scan of the cgroup filesystem (`cgroups.parse` says whose it is:
the pod's own cgroup, or one of its containers'). Every cgroup of a known pod is listed
with what is known of it:
- the pod's own cgroup with the pod's facts (namespace, name, labels, cluster), so that a
  container's processes are decided with them from their first exec, before its own cgroup
  is listed or named (the kernel looks up a process's deepest listed ancestor);
- a container's cgroup with the pod's facts and, once the pod's status names the container
  (`containerID`), its name and image.
`Container.workload` is what the kernel's per-cgroup masks are computed from.

After a restart, the containers the last sensor enforced for (`restore`) stay listed with
the facts it kept until the first full list of pods says otherwise: a change that comes
before it (the cluster's id or name, a cgroup scan) never unlists them for want of a pod.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stockade.policy.evaluator import ContainerFacts, KubernetesFacts
from stockade.sensor.cgroups import KubeCgroup, parse, pod_cgroup_names
from stockade.sensor.containers import Container

__all__ = ["NodeContainers", "PodError", "PodFacts", "image_facts", "pod_facts"]

_IMAGE_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_STATUS_LISTS = ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")
MAX_IMAGE = 4096
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


class PodError(ValueError):
    """A pod object that can't be read; the message names the field."""


@dataclass(frozen=True)
class PodFacts:
    """What the sensor keeps of one pod bound to its node."""

    uid: str  # metadata.uid
    cgroup_uid: str  # the uid its cgroups carry: its own, or a static pod's (mirror pods)
    created: str  # metadata.creationTimestamp (the apiserver's): the oldest mirror pod wins
    kubernetes: KubernetesFacts  # without cluster_id and cluster_name: the table adds them
    containers: Mapping[str, tuple[str, str]]  # runtime container id → (name, image)


def image_facts(image: str) -> tuple[str | None, str | None, str | None]:
    """(full name, name, tag) of an image reference as a pod status gives it
    (`docker.io/library/nginx:1.25`, `registry:5000/team/app@sha256:…`); all None for a
    bare image id (`sha256:…`) or anything that isn't a reference."""
    if not image or len(image) > MAX_IMAGE or image.startswith("sha256:"):
        return None, None, None
    ref = image.split("@", 1)[0]
    tag: str | None = None
    head, _, last = ref.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
        ref = f"{head}/{last}" if head else last
    if not _IMAGE_NAME.fullmatch(last):
        return None, None, None
    return ref, last, tag or None


def _strings(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise PodError(f"{where}: not a map of strings")
    return dict(value)


def pod_facts(body: Mapping[str, Any]) -> PodFacts:
    """A pod object as the apiserver sends it; PodError when it isn't one."""
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        raise PodError("metadata: missing")
    uid, namespace, name = meta.get("uid"), meta.get("namespace"), meta.get("name")
    if not all(isinstance(v, str) and v for v in (uid, namespace, name)):
        raise PodError("metadata: uid, namespace and name must be strings")
    assert isinstance(uid, str) and isinstance(namespace, str) and isinstance(name, str)
    owners = meta.get("ownerReferences") or []
    if not isinstance(owners, list):
        raise PodError("metadata.ownerReferences: not a list")
    owner_kind = next(
        (o.get("kind") for o in owners if isinstance(o, dict) and o.get("controller")), None
    )
    status = body.get("status")
    status = {} if status is None else status
    if not isinstance(status, dict):
        raise PodError("status: not an object")
    containers: dict[str, tuple[str, str]] = {}
    for key in _STATUS_LISTS:
        for entry in status.get(key) or []:
            if not isinstance(entry, dict):
                raise PodError(f"status.{key}: not a list of objects")
            runtime_id = entry.get("containerID")
            if not isinstance(runtime_id, str) or "://" not in runtime_id:
                continue  # not started yet
            cname, image = entry.get("name"), entry.get("image")
            if not isinstance(cname, str) or not isinstance(image, str):
                raise PodError(f"status.{key}: name and image must be strings")
            containers[runtime_id.split("://", 1)[1]] = (cname, image)
    ip = status.get("podIP")
    # a static pod's cgroups carry the kubelet's uid for it, which its mirror pod names
    annotations = _strings(meta.get("annotations"), "metadata.annotations")
    mirror = annotations.get(MIRROR_ANNOTATION)
    created = meta.get("creationTimestamp")
    return PodFacts(
        uid=uid.lower(),
        cgroup_uid=(mirror or uid).lower(),
        created=created if isinstance(created, str) else "",
        kubernetes=KubernetesFacts(
            namespace=namespace,
            pod_name=name,
            pod_labels=_strings(meta.get("labels"), "metadata.labels"),
            pod_annotations=annotations or None,
            pod_ip=ip if isinstance(ip, str) and ip else None,
            pod_owner_kind=owner_kind if isinstance(owner_kind, str) else None,
        ),
        containers=containers,
    )


@dataclass
class NodeContainers:
    """Pods and cgroups of one node; `listed` is every cgroup of a known pod, with its facts.

    Each change returns the cgroup ids whose facts changed (or that left `listed`), for the
    caller to write into the kernel's maps.
    """

    cluster_name: str | None = None
    cluster_id: str | None = None
    pods: dict[str, PodFacts] = field(default_factory=dict)
    cgroups: dict[int, tuple[str, KubeCgroup]] = field(default_factory=dict)
    listed: dict[int, Container] = field(default_factory=dict)
    mirrors: dict[str, set[str]] = field(default_factory=dict)  # static pod uid → mirror pods
    restored: dict[int, Container] = field(default_factory=dict)  # until the pods are listed
    pods_listed: bool = False  # a full list of the pods came (`replace_pods`)

    def _owner(self, cgroup_uid: str) -> PodFacts | None:
        """The pod whose facts the cgroups named with `cgroup_uid` get: the pod of that uid
        (a uid the apiserver gave) whatever its annotations say, else the oldest mirror pod
        naming it (an annotation any pod creator can write: it never takes another pod's)."""
        own = self.pods.get(cgroup_uid)
        if own is not None:
            return own
        claims = [self.pods[uid] for uid in self.mirrors.get(cgroup_uid, ())]
        return min(claims, key=lambda p: (p.created, p.uid), default=None)

    def _kubernetes(self, pod: PodFacts) -> KubernetesFacts:
        return pod.kubernetes.model_copy(
            update={"cluster_id": self.cluster_id, "cluster_name": self.cluster_name}
        )

    def _facts(self, cgroup_id: int) -> Container | None:
        path, kc = self.cgroups[cgroup_id]
        pod = self._owner(kc.pod_uid)
        if pod is None:
            return None if self.pods_listed else self.restored.get(cgroup_id)
        kubernetes = self._kubernetes(pod)
        container = ContainerFacts()
        named = pod.containers.get(kc.container_id) if kc.container_id else None
        if named is not None:
            name, image = named
            full, short, tag = image_facts(image)
            container = ContainerFacts(
                id=kc.container_id,
                name=name,
                image_full_name=full,
                image_name=short,
                image_tag=tag,
            )
        elif kc.container_id:
            container = ContainerFacts(id=kc.container_id)
        return Container(path, cgroup_id, container, kubernetes)

    def _refresh(self, cgroup_ids: Iterable[int]) -> set[int]:
        changed: set[int] = set()
        for cgid in cgroup_ids:
            facts = self._facts(cgid) if cgid in self.cgroups else None
            if facts != self.listed.get(cgid):
                changed.add(cgid)
                if facts is None:
                    self.listed.pop(cgid, None)
                else:
                    self.listed[cgid] = facts
        return changed

    def _of_pod(self, *pods: PodFacts) -> list[int]:
        uids = {p.uid for p in pods} | {p.cgroup_uid for p in pods}
        return [cgid for cgid, (_, kc) in self.cgroups.items() if kc.pod_uid in uids]

    def _unindex(self, pod: PodFacts) -> None:
        claims = self.mirrors.get(pod.cgroup_uid)
        if claims is not None:
            claims.discard(pod.uid)
            if not claims:
                del self.mirrors[pod.cgroup_uid]

    def _index(self, pod: PodFacts) -> None:
        self.pods[pod.uid] = pod
        if pod.cgroup_uid != pod.uid:
            self.mirrors.setdefault(pod.cgroup_uid, set()).add(pod.uid)

    def unmade(self) -> dict[str, Container]:
        """The known pods whose own cgroup isn't seen yet: each name it may be made with
        (`pod_cgroup_names`) → the facts it will be listed with (path and id unknown), so
        that the kernel can list it in its mkdir, however late the record is read."""
        made = {kc.pod_uid for _, kc in self.cgroups.values() if kc.container_id is None}
        unmade: dict[str, Container] = {}
        for uid in {p.uid for p in self.pods.values()} | set(self.mirrors):
            pod = self._owner(uid)
            if uid in made or pod is None:
                continue
            facts = Container("", 0, ContainerFacts(), self._kubernetes(pod))
            unmade.update(dict.fromkeys(pod_cgroup_names(uid), facts))
        return unmade

    def put_pod(self, pod: PodFacts) -> set[int]:
        old = self.pods.get(pod.uid)
        if old == pod:
            return set()
        if old is not None:
            self._unindex(old)
        self._index(pod)
        return self._refresh(self._of_pod(pod, *([old] if old else [])))

    def remove_pod(self, uid: str) -> set[int]:
        old = self.pods.pop(uid, None)
        if old is None:
            return set()
        self._unindex(old)
        return self._refresh(self._of_pod(old))

    def replace_pods(self, pods: Iterable[PodFacts]) -> set[int]:
        """A full list: pods not in it are gone (and cgroups listed from a cache before the
        pods were known are checked against it)."""
        self.pods, self.mirrors = {}, {}
        for pod in pods:
            self._index(pod)
        self.pods_listed, self.restored = True, {}
        return self._refresh(set(self.cgroups) | set(self.listed))

    def restore(self, containers: Iterable[Container]) -> dict[int, Container]:
        """The containers a previous sensor kept (before any pod is known), listed with its
        facts until the pods are: those whose cgroup directory is still there, under the id
        it has now (an id is an inode: after a reboot it may be another cgroup's, and a
        directory made again has another; the path names the pod and the container). The
        cluster's id and name they were decided with hold until the apiserver says."""
        ids = {path: cgid for cgid, (path, _) in self.cgroups.items()}
        kept = {
            ids[c.cgroup_path]: replace(c, cgroup_id=ids[c.cgroup_path])
            for c in containers if c.cgroup_path in ids
        }  # fmt: skip
        for c in kept.values():
            self.cluster_id = self.cluster_id or c.kubernetes.cluster_id
            self.cluster_name = self.cluster_name or c.kubernetes.cluster_name
        self.restored = dict(kept)
        self.listed.update(kept)
        return kept

    def add_cgroup(self, cgroup_id: int, path: str) -> set[int]:
        """A cgroup seen (made, or found by a scan); ignored unless a kubelet layout's."""
        kc = parse(path)
        if kc is None or self.cgroups.get(cgroup_id) == (path, kc):
            return set()
        self.cgroups[cgroup_id] = (path, kc)
        return self._refresh([cgroup_id])

    def remove_cgroup(self, cgroup_id: int) -> set[int]:
        if self.cgroups.pop(cgroup_id, None) is None:
            return set()
        return self._refresh([cgroup_id])

    def replace_cgroups(self, found: Iterable[tuple[int, str]]) -> set[int]:
        """A full scan: cgroups not in it are gone."""
        fresh = dict(found)
        changed: set[int] = set()
        for cgid in [c for c in self.cgroups if c not in fresh]:
            changed |= self.remove_cgroup(cgid)
        for cgid, path in fresh.items():
            changed |= self.add_cgroup(cgid, path)
        return changed

    def set_cluster(self, cluster_id: str | None, cluster_name: str | None) -> set[int]:
        """The cluster's id (the kube-system namespace's UID) and name."""
        if (cluster_id, cluster_name) == (self.cluster_id, self.cluster_name):
            return set()
        self.cluster_id, self.cluster_name = cluster_id, cluster_name
        return self._refresh(list(self.cgroups))
