"""Counts by Node UID (issue 12): a Node deleted and created again under its name."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from stockade.operator.ledger import PREFIX, RETIRED

from .conftest import Cluster, Kubectl, Operator, wait_for
from .test_operator import _policy, _report, apply, cpol

pytestmark = pytest.mark.integration


def node_uid(core: client.CoreV1Api, name: str) -> str:
    node: Any = core.read_node(name)
    return str(node.metadata.uid)


def counts_configmap(core: client.CoreV1Api, op: Operator, name: str) -> dict[str, Any] | None:
    try:
        cm: Any = core.read_namespaced_config_map(name, op.namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    doc: dict[str, Any] = json.loads(cm.data["counts.json"])
    return doc


def test_a_node_back_under_its_name_counts_again(
    operator: Operator, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    namespace: str,
) -> None:  # fmt: skip
    core = client.CoreV1Api(k8s_api)
    a = cluster.node("a")
    first_uid = node_uid(core, a)
    cluster.pod(namespace, "web-0", a, {"app": "web"})
    apply(kubectl, cpol("guard", namespace, {"app": "web"}))
    uid = _policy(k8s_api, namespace, "guard")["metadata"]["uid"]

    def counters(blocked: int) -> list[dict[str, Any]]:
        return [{"uid": uid, "generation": 1, "blocked": blocked}]

    def blocked() -> int:
        return int(((_policy(k8s_api, namespace, "guard").get("status") or {}).get("counts")
                    or {}).get("blocked", 0))  # fmt: skip

    cluster.report(a, {**_report("a-1", "lsm", "sha256:x", counters(5)), "nodeUid": first_uid})
    wait_for("counts 5", lambda: blocked() == 5)
    assert counts_configmap(core, operator, PREFIX + first_uid) is not None

    # The Node goes: its share moves to the retired totals, its ledger is deleted.
    cluster.delete_node(a)
    wait_for("the node's counts retired", lambda: counts_configmap(
        core, operator, PREFIX + first_uid) is None)  # fmt: skip
    retired = counts_configmap(core, operator, RETIRED)
    assert retired is not None and retired["policies"][uid]["blocked"] == 5
    assert blocked() == 5

    # Back under its name (another uid); the old report is still there: it is ignored.
    cluster.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=a)))
    cluster.nodes.append(a)
    second_uid = node_uid(core, a)
    assert second_uid != first_uid
    cluster.report(a, {**_report("a-1", "lsm", "sha256:x", counters(5)), "nodeUid": first_uid})
    cluster.report(a, {**_report("a-2", "lsm", "sha256:y", counters(3)), "nodeUid": second_uid})
    wait_for("counts 8", lambda: blocked() == 8)
    status = _policy(k8s_api, namespace, "guard")["status"]
    assert "ledger" not in status
    assert len(json.dumps(status)) < 4096
