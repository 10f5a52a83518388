"""kopf registrations: indexes hold what scoping and status need; events wake the reconciler.

Indexes, not re-lists: kopf fills them before it calls any event handler, so
the first reconcile sees every namespace, node, policy and report. Pods are
not watched by kopf (its per-object state is too heavy for tens of thousands):
`pods.PodWatch` keeps them in a `PodIndex`, and the reconciler waits for its
first list too.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import kopf
from pydantic import ValidationError

from stockade.operator.objects import PolicyRecord, node_report, policy_record
from stockade.operator.pods import PodIndex
from stockade.operator.reconciler import Reconciler
from stockade.operator.targeting import Indexes
from stockade.policy.document import PolicyDocument
from stockade.policy.reports import NodePolicyReport
from stockade.policy.resources import GROUP

log = logging.getLogger("stockade.operator")
POLICY_KINDS = {
    "containerpolicies": "ContainerPolicy",
    "clustercontainerpolicies": "ClusterContainerPolicy",
}


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, pods: PodIndex) -> None:
    """Add the operator's handlers to `registry`, all feeding `reconciler`; `pods`: the pods."""

    def attach(kwargs: dict[str, Any]) -> None:
        if reconciler.ix is None:
            reconciler.attach(
                Indexes(
                    pods=pods.by_node,
                    pod_nodes=pods.namespace_nodes,
                    namespaces=kwargs["namespace_labels"],
                    nodes=kwargs["node_uids"],
                    policies=kwargs["policies_by_namespace"],
                    reports=kwargs["reports_by_node"],
                )
            )

    @kopf.index("namespaces", id="namespace_labels", registry=registry)
    def namespace_labels(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
        return {name: dict(labels)}

    @kopf.index("nodes", id="node_uids", registry=registry)
    def node_uids(name: str, uid: str, **_: Any) -> dict[str, str]:
        return {name: uid}

    # while a record holds its document: (uid, generation) → it (`policy_record`)
    parsed: weakref.WeakValueDictionary[tuple[str, int], PolicyDocument] = (
        weakref.WeakValueDictionary()
    )

    @kopf.index(GROUP, "containerpolicies", id="policies_by_namespace", registry=registry)
    @kopf.index(GROUP, "clustercontainerpolicies", id="policies_by_namespace", registry=registry)
    def policies_by_namespace(body: kopf.Body, **_: Any) -> dict[str, PolicyRecord]:
        record = policy_record(body, parsed)
        return {record.namespace: record}

    @kopf.index(GROUP, "nodepolicyreports", id="reports_by_node", registry=registry)
    def reports_by_node(name: str, body: kopf.Body, **_: Any) -> dict[str, NodePolicyReport]:
        try:
            return {name: node_report(body)}
        except ValidationError as exc:
            log.warning("unreadable NodePolicyReport", extra={"node": name, "error": str(exc)})
            return {}

    @kopf.on.event("namespaces", registry=registry)
    async def namespace_event(name: str, **kwargs: Any) -> None:
        attach(kwargs)
        reconciler.namespace_changed(name)

    @kopf.on.event("nodes", registry=registry)
    async def node_event(name: str, **kwargs: Any) -> None:
        attach(kwargs)
        reconciler.node_changed(name)

    @kopf.on.event(GROUP, "containerpolicies", registry=registry)
    @kopf.on.event(GROUP, "clustercontainerpolicies", registry=registry)
    async def policy_event(
        type: str | None, body: kopf.Body, resource: kopf.Resource, **kwargs: Any
    ) -> None:
        attach(kwargs)
        meta = body["metadata"]
        key = (POLICY_KINDS[resource.plural], meta.get("namespace") or "", meta["name"])
        reconciler.policy_changed(
            key, meta.get("uid", ""), int(meta.get("generation") or 0), type == "DELETED"
        )

    @kopf.on.event(GROUP, "nodepolicyreports", registry=registry)
    async def report_event(name: str, **kwargs: Any) -> None:
        attach(kwargs)
        reconciler.report_changed(name)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In-cluster config or the current kubeconfig, as the kubernetes client reads them."""
        return kopf.login_via_client(**kwargs)

    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry)
    async def start_reconciler(**_: Any) -> None:
        tasks.append(asyncio.create_task(reconciler.run(), name="stockade reconciler"))

    @kopf.on.cleanup(registry=registry)
    async def stop_reconciler(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
