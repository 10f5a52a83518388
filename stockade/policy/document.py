"""A policy together with where it applies: the unit the evaluator and compiler take.

A bare policy (the seed's format) applies to every container. A
ContainerPolicy applies to the pods of its namespace that its podSelector
selects; a ClusterContainerPolicy to the pods its podSelector selects in the
namespaces its namespaceSelector selects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from stockade.policy.model import Mode, Policy
from stockade.policy.predicates import Workload
from stockade.policy.resources import ClusterContainerPolicy, LabelSelector, Manifest

PolicyKind = Literal["Policy", "ContainerPolicy", "ClusterContainerPolicy"]
BARE_KIND: Final = "Policy"
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Scope:
    namespace: str | None = None  # a ContainerPolicy's own namespace
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None

    def holds(self, workload: Workload) -> bool:
        """Whether the workload is in scope; an unknown fact that is needed fails."""
        if self.namespace is not None and workload.namespace != self.namespace:
            return False
        if not _selects(self.pod_selector, workload.pod_labels):
            return False
        return _selects(self.namespace_selector, workload.namespace_labels)


def _selects(selector: LabelSelector | None, labels: dict[str, str] | None) -> bool:
    if selector is None or (not selector.match_labels and not selector.match_expressions):
        return True
    return labels is not None and selector.matches(labels)


@dataclass(frozen=True)
class PolicyDocument:
    kind: PolicyKind  # "Policy" for a bare policy, else the resource kind
    name: str
    policy: Policy
    namespace: str | None = None
    uid: str = ""
    generation: int = 0
    mode: Mode = Mode.ENFORCE
    scope: Scope = Scope()

    @property
    def key(self) -> str:
        """`namespace/name` for a namespaced policy, `name` otherwise."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def bare(cls, name: str, policy: Policy) -> PolicyDocument:
        return cls(kind=BARE_KIND, name=name, policy=policy)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> PolicyDocument:
        spec = manifest.spec
        meta = manifest.metadata
        if isinstance(manifest, ClusterContainerPolicy):
            namespace = None
            scope = Scope(
                pod_selector=spec.pod_selector,
                namespace_selector=manifest.spec.namespace_selector,
            )
        else:
            namespace = meta.namespace or DEFAULT_NAMESPACE
            scope = Scope(namespace=namespace, pod_selector=spec.pod_selector)
        return cls(
            kind=manifest.kind,
            name=meta.name,
            namespace=namespace,
            uid=meta.uid,
            generation=meta.generation,
            mode=spec.mode or Mode.ENFORCE,
            scope=scope,
            policy=spec.policy(),
        )
