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
from stockade.policy.compiler import Audience
from stockade.policy.document import PolicyDocument
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


@dataclass(frozen=True)
class Verdicts:
    """Which documents select one of a node's pods, while its pods and labels stay these."""

    pods: tuple[PodRef, ...]
    labels: dict[str, dict[str, str]]
    by_document: dict[int, tuple[PolicyDocument, bool]]  # id(document) → (it, selects)


@dataclass
class Targeting:
    targets: dict[str, frozenset[PolicyKey]] = field(default_factory=dict)  # node → policies
    policy_nodes: dict[PolicyKey, set[str]] = field(default_factory=lambda: defaultdict(set))
    # A policy edit changes one document: only it is scoped again on each node.
    verdicts: dict[str, Verdicts] = field(default_factory=dict)

    def inputs(self, ix: Indexes, node: str) -> NodeInputs | None:
        """The node's inputs from the indexes now; None when the node is gone."""
        node_uid = first(ix.nodes, node)
        if node_uid is None:
            self.verdicts.pop(node, None)
            return None
        refs = tuple(ix.pods.get(node, {}).values())
        namespaces = sorted({p.namespace for p in refs})
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
        chosen = [candidates[i] for i in self._selecting(node, refs, labels, candidates)]
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

    def _selecting(
        self,
        node: str,
        refs: tuple[PodRef, ...],
        labels: dict[str, dict[str, str]],
        candidates: dict[int, PolicyRecord],
    ) -> list[int]:
        """The ids of the candidates' documents that select one of `refs`, in their order;
        verdicts from the node's last pass are kept while its pods and labels are the same."""
        known = self.verdicts.get(node)
        before = (
            known.by_document if known and known.pods == refs and known.labels == labels else {}
        )
        audience: Audience | None = None
        now: dict[int, tuple[PolicyDocument, bool]] = {}
        for key, record in candidates.items():
            verdict = before.get(key)
            if verdict is None or verdict[0] is not record.document:
                assert record.document is not None
                audience = audience or Audience([r.pod() for r in refs], labels)
                verdict = (record.document, audience.selected_by(record.document))
            now[key] = verdict
        self.verdicts[node] = Verdicts(refs, labels, now)
        return [key for key, (_, selects) in now.items() if selects]

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
