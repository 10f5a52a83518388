"""The ConfigMap that carries one node's bundle: its name, labels and annotations."""

from __future__ import annotations

import hashlib
from typing import Any

from stockade.policy.compiler import Bundle, configmap_payload

NAME_PREFIX = "stockade-node-"
MAX_NAME = 253  # a ConfigMap name is a DNS subdomain
HASH_ANNOTATION = "stockade.dev/bundle-hash"
POLICIES_ANNOTATION = "stockade.dev/policies"
NODE_ANNOTATION = "stockade.dev/node"
CLUSTER_ANNOTATION = "stockade.dev/cluster-name"  # for kubernetesClusterName conditions
MANAGED_BY = "stockade-operator"
COMPONENT_LABEL = "app.kubernetes.io/component"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},{COMPONENT_LABEL}=bundle"


def configmap_name(node: str) -> str:
    """`stockade-node-<node>`; too long a name keeps a prefix of the node and a hash of all."""
    name = NAME_PREFIX + node
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(node.encode()).hexdigest()[:16]
    keep = (NAME_PREFIX + node)[: MAX_NAME - len(digest) - 1].rstrip("-.")
    return f"{keep}-{digest}"


def policy_labels(bundle: Bundle) -> str:
    """The bundle's policies as `namespace/name@generation`, one per line, for kubectl."""
    return "\n".join(
        (f"{p['namespace']}/" if p["namespace"] else "") + f"{p['name']}@{p['generation']}"
        for p in bundle["policies"]
    )


def configmap(
    bundle: Bundle, node: str, node_uid: str, namespace: str, cluster: str
) -> dict[str, Any]:
    """The whole ConfigMap for `bundle` on `node`, owned by the Node (garbage-collected with it)."""
    data, binary_data = configmap_payload(bundle)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(node),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGED_BY,
                "app.kubernetes.io/part-of": "stockade",
                COMPONENT_LABEL: "bundle",
            },
            "annotations": {
                NODE_ANNOTATION: node,
                CLUSTER_ANNOTATION: cluster,
                HASH_ANNOTATION: bundle["hash"],
                POLICIES_ANNOTATION: policy_labels(bundle),
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
            ],
        },
        "data": data,
    }
    if binary_data:
        body["binaryData"] = binary_data
    return body
