"""Which policies each node's bundle must hold: those whose scope selects ≥1 of its pods.

Reads the indexes the watches keep (`Indexes`); remembers the answer per node
and per policy, for the passes that follow and for the statuses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from stockade.operator.objects import PodRef, PolicyKey, PolicyRecord
from stockade.policy.compiler import applicable
from stockade.policy.reports import NodePolicyReport


@dataclass
class Indexes:
    """kopf's indexes (kopf updates these objects in place), and the pods (`pods.PodIndex`)."""

    pods: Mapping[str, Mapping[tuple[str, str], PodRef]]  # node → its pods (bound, not finished)
    pod_nodes: Mapping[str, Mapping[str, int]]  # namespace → nodes with its pods (and how many)
    namespaces: kopf.Index[str, dict[str, str]]  # name → labels
    nodes: kopf.Index[str, str]  # name → uid
    policies: kopf.Index[str, PolicyRecord]  # namespace ("" = cluster-scoped) → policies
    reports: kopf.Index[str, NodePolicyReport]  # node → its sensor's report


def first(stores: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The one value a kopf index holds under `key`."""
    store = stores.get(key)
    return next(iter(store), default) if store is not None else default


@dataclass(frozen=True)
class NodeInputs:
    """What a node's bundle is compiled from."""

    uid: str  # the Node's, for the ConfigMap's ownerReference
    policies: list[PolicyRecord]  # those whose scope selects one of its pods
    labels: dict[str, dict[str, str]]  # the known namespaces of its pods → labels
    labels_key: Hashable  # those labels, when a namespaceSelector makes them matter

    @property
    def memo(self) -> Hashable:
        """Equal memos compile to the same bundle."""
        return (
            self.uid,
            tuple(sorted((*r.key, r.uid, r.generation) for r in self.policies)),
            self.labels_key,
        )


@dataclass
class Targeting:
    targets: dict[str, frozenset[PolicyKey]] = field(default_factory=dict)  # node → policies
    policy_nodes: dict[PolicyKey, set[str]] = field(default_factory=lambda: defaultdict(set))

    def inputs(self, ix: Indexes, node: str) -> NodeInputs | None:
        """The node's inputs from the indexes now; None when the node is gone."""
        node_uid = first(ix.nodes, node)
        if node_uid is None:
            return None
        pods = [p.pod() for p in ix.pods.get(node, {}).values()]
        namespaces = sorted({p.namespace for p in pods})
        # Only known namespaces have labels: an unknown one is selected by no
        # namespaceSelector until its watch event comes (which marks its nodes).
        labels = {
            ns: dict(known) for ns in namespaces if (known := first(ix.namespaces, ns)) is not None
        }
        # A ContainerPolicy can only select pods of its own namespace.
        candidates = {
            id(r.document): r
            for ns in ["", *namespaces]
            for r in ix.policies.get(ns, ())
            if r.document is not None
        }
        documents = [r.document for r in candidates.values() if r.document is not None]
        chosen = [candidates[id(d)] for d in applicable(documents, pods, labels)]
        resolves_namespaces = any(
            r.document is not None and r.document.scope.namespace_selector is not None
            for r in chosen
        )
        labels_key = (
            tuple(
                (ns, tuple(sorted(labels[ns].items())) if ns in labels else None)
                for ns in namespaces
            )
            if resolves_namespaces
            else None
        )
        return NodeInputs(node_uid, chosen, labels, labels_key)

    def assign(self, node: str, targets: frozenset[PolicyKey]) -> set[PolicyKey]:
        """Record the node's policies; returns those that came or went."""
        before = self.targets.get(node, frozenset())
        for key in before - targets:
            self.policy_nodes[key].discard(node)
            if not self.policy_nodes[key]:
                del self.policy_nodes[key]
        for key in targets - before:
            self.policy_nodes[key].add(node)
        if targets:
            self.targets[node] = targets
        else:
            self.targets.pop(node, None)
        return set(before ^ targets)

    def of_node(self, node: str) -> frozenset[PolicyKey]:
        return self.targets.get(node, frozenset())

    def nodes_of(self, key: PolicyKey) -> set[str]:
        return self.policy_nodes.get(key, set())

    @staticmethod
    def candidate_nodes(ix: Indexes, key: PolicyKey) -> set[str]:
        """Nodes where a policy could apply: where its namespace has pods, or all."""
        namespace = key[1]
        if namespace:
            return set(ix.pod_nodes.get(namespace, {}))
        return set(ix.pods)
