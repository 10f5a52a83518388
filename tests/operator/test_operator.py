"""The operator against the real apiserver: bundles per node, status, invalid policies, restarts."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from stockade.operator.bundles import POLICIES_ANNOTATION, configmap_name
from stockade.policy.bundle import HASH_ANNOTATION, from_configmap
from tests.integration.test_crds import POLICY_COLUMNS

from .conftest import Cluster, Kubectl, Operator, wait_for

pytestmark = pytest.mark.integration


def cpol(name: str, namespace: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": labels},
            "process": {
                "selectors": [{"name": "shells", "processName": ["bash", "sh"]}],
                "responses": [{"match": ["shells"], "actions": ["alert"]}],
            },
            **spec,
        },
    }


def ccpol(
    name: str, namespace_labels: dict[str, str], pod_labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ClusterContainerPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": namespace_labels},
            "podSelector": {"matchLabels": pod_labels},
            "file": {
                "selectors": [
                    {"name": "etc", "operation": ["modifyFile"], "targetFilePath": ["/etc/**"]}
                ],
                "responses": [{"match": ["etc"], "actions": ["log"]}],
            },
        },
    }


def apply(kubectl: Kubectl, obj: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(obj))


def read_bundle(core: client.CoreV1Api, op: Operator, node: str) -> tuple[set[str], Any] | None:
    """The `namespace/name@generation` of the node's bundle, and its ConfigMap."""
    try:
        cm: Any = core.read_namespaced_config_map(configmap_name(node), op.namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    bundle = from_configmap(cm.data, cm.binary_data, cm.metadata.annotations)
    assert bundle.hash == cm.metadata.annotations[HASH_ANNOTATION]
    assert bundle.node == node
    labels = set(filter(None, cm.metadata.annotations[POLICIES_ANNOTATION].split("\n")))
    held = {
        (f"{p.namespace}/" if p.namespace else "") + f"{p.name}@{p.generation}"
        for p in bundle.policies
    }
    assert labels == held
    return held, cm


def mine(core: client.CoreV1Api, op: Operator, node: str, *prefixes: str) -> set[str] | None:
    """The policies of the node's bundle whose `namespace/name` is one of `prefixes`."""
    found = read_bundle(core, op, node)
    if found is None:
        return None
    return {p for p in found[0] if p.rsplit("@", 1)[0] in prefixes}


def test_bundles_follow_pods_namespaces_and_policies(
    operator: Operator, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    namespace: str, unique: str,
) -> None:  # fmt: skip
    core = client.CoreV1Api(k8s_api)
    a, b = cluster.node("a"), cluster.node("b")
    core.patch_namespace(namespace, {"metadata": {"labels": {"team": unique}}})
    cluster.pod(namespace, "web-0", a, {"app": "web"})
    cluster.pod(namespace, "db-0", b, {"app": "db"})
    web = f"{namespace}/web-shells"
    db = f"db-etc-{unique}"
    apply(kubectl, cpol("web-shells", namespace, {"app": "web"}))
    apply(kubectl, ccpol(db, {"team": unique}, {"app": "db"}))

    # Each policy is in the bundle of the nodes with a pod in its scope, and only there.
    wait_for("web on a, db on b", lambda: mine(core, operator, a, web, db) == {f"{web}@1"}
             and mine(core, operator, b, web, db) == {f"{db}@1"})  # fmt: skip

    # A pending pod bound to b brings web's policy to b's bundle: the unprotected window.
    started = time.monotonic()
    cluster.pod(namespace, "web-1", b, {"app": "web"}, phase="Pending")
    wait_for(
        "web on b", lambda: mine(core, operator, b, web, db) == {f"{web}@1", f"{db}@1"}, timeout=10
    )
    window = time.monotonic() - started
    print(f"pod bound → bundle updated: {window:.3f} s")
    assert window < 2.0

    # The namespace no longer selected: the cluster policy leaves b.
    core.patch_namespace(namespace, {"metadata": {"labels": {"team": "other"}}})
    wait_for("db gone from b", lambda: mine(core, operator, b, web, db) == {f"{web}@1"})

    # The last web pod on a goes: a's bundle is empty of our policies.
    cluster.delete_pod(namespace, "web-0")
    wait_for("web gone from a", lambda: mine(core, operator, a, web, db) == set())

    # An edit is a new generation, in every bundle that holds the policy.
    apply(kubectl, cpol("web-shells", namespace, {"app": "web"}, mode="audit"))
    wait_for("generation 2 on b", lambda: mine(core, operator, b, web, db) == {f"{web}@2"})
    found = read_bundle(core, operator, b)
    assert found is not None
    cm = found[1]
    bundle = from_configmap(cm.data, cm.binary_data, cm.metadata.annotations)
    assert [p.mode for p in bundle.policies if p.name == "web-shells"] == ["audit"]

    # Deleted policy: out of the bundle. Deleted node: its bundle goes.
    kubectl("delete", "cpol", "web-shells", "-n", namespace)
    wait_for("web gone from b", lambda: mine(core, operator, b, web, db) == set())
    cluster.delete_node(b)
    wait_for("b's bundle deleted", lambda: read_bundle(core, operator, b) is None)
    kubectl("delete", "ccpol", db)


def _policy(k8s_api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(k8s_api)
    obj: Any = custom.get_namespaced_custom_object(
        "stockade.dev", "v1alpha1", namespace, "containerpolicies", name
    )
    return dict(obj)


def _ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None
    )


def _report(
    instance: str, mode: str, bundle_hash: str, counters: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "sensor": {
            "instanceId": instance,
            "kernelVersion": "6.1.0-test",
            "mode": mode,
            "heartbeatTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "bundle": {"hash": bundle_hash},
        "policies": counters,
        **extra,
    }


def test_status_from_node_reports(
    operator: Operator, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    namespace: str,
) -> None:  # fmt: skip
    core = client.CoreV1Api(k8s_api)
    a, b = cluster.node("a"), cluster.node("b")
    cluster.pod(namespace, "web-0", a, {"app": "web"})
    cluster.pod(namespace, "web-1", b, {"app": "web"})
    apply(kubectl, cpol("guard", namespace, {"app": "web"}))

    # No sensors yet: compiled and written, waiting for the nodes.
    obj = wait_for("Applying", lambda: (o := _policy(k8s_api, namespace, "guard"))
                   and (_ready(o) or {}).get("reason") == "Applying" and o)  # fmt: skip
    status = obj["status"]
    assert status["observedGeneration"] == 1
    assert status["nodes"] == {"targeted": 2, "applied": 0, "summary": "0/2", "modes": {}}
    assert "no NodePolicyReport" in _ready(obj)["message"]  # type: ignore[index]
    uid = obj["metadata"]["uid"]

    def counters(blocked: int, alerted: int, generation: int = 1) -> list[dict[str, Any]]:
        return [{"uid": uid, "generation": generation, "kind": "ContainerPolicy",
                 "namespace": namespace, "name": "guard", "blocked": blocked,
                 "alerted": alerted, "logged": 0}]  # fmt: skip

    def hash_of(node: str) -> str:
        # a write that failed under load is retried: "Applying" may come before it lands
        found = wait_for(f"{node}'s bundle", lambda: read_bundle(core, operator, node))
        return str(found[1].metadata.annotations[HASH_ANNOTATION])

    cluster.report(a, _report("a-1", "lsm", hash_of(a), counters(3, 5)))
    obj = wait_for("1/2", lambda: (o := _policy(k8s_api, namespace, "guard"))
                   and o["status"]["nodes"]["applied"] == 1 and o)  # fmt: skip
    assert (_ready(obj) or {})["reason"] == "Applying"
    assert "n-" in (_ready(obj) or {})["message"]

    cluster.report(b, _report("b-1", "kill", hash_of(b), counters(1, 1)))
    obj = wait_for("Ready", lambda: (o := _policy(k8s_api, namespace, "guard"))
                   and (_ready(o) or {}).get("status") == "True" and o)  # fmt: skip
    assert obj["status"]["nodes"] == {
        "targeted": 2,
        "applied": 2,
        "summary": "2/2",
        "modes": {"kill": 1, "lsm": 1},
    }
    assert obj["status"]["counts"] == {"blocked": 4, "alerted": 6, "logged": 0}
    table = kubectl("get", "cpol", "guard", "-n", namespace).stdout.split("\n")
    assert table[0].split() == POLICY_COLUMNS
    assert table[1].split()[:7] == ["guard", "enforce", "1", "2/2", "4", "6", "True"]

    # The sensor on a restarts: counters from zero, then counting up again.
    cluster.report(a, _report("a-2", "lsm", hash_of(a), counters(0, 1)))
    wait_for("counts 4/7", lambda: _policy(k8s_api, namespace, "guard")["status"]["counts"]
             == {"blocked": 4, "alerted": 7, "logged": 0})  # fmt: skip
    cluster.report(a, _report("a-2", "lsm", hash_of(a), counters(2, 2)))
    wait_for("counts 6/8", lambda: _policy(k8s_api, namespace, "guard")["status"]["counts"]
             == {"blocked": 6, "alerted": 8, "logged": 0})  # fmt: skip

    # A node error: NodeErrors, with an Event on the policy.
    cluster.report(b, _report("b-1", "kill", hash_of(b), counters(1, 1), errors=[{
        "time": "2026-01-01T00:00:00Z", "message": "map update failed: E2BIG"}]))  # fmt: skip
    obj = wait_for("NodeErrors", lambda: (o := _policy(k8s_api, namespace, "guard"))
                   and (_ready(o) or {}).get("reason") == "NodeErrors" and o)  # fmt: skip
    assert "E2BIG" in (_ready(obj) or {})["message"]
    assert obj["status"]["counts"] == {"blocked": 6, "alerted": 8, "logged": 0}
    wait_for("the NodeErrors Event", lambda: "NodeErrors" in kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=guard",
        "-o", "jsonpath={.items[*].reason}").stdout)  # fmt: skip


def test_invalid_policy_is_refused_alone(
    operator: Operator, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    namespace: str,
) -> None:  # fmt: skip
    core = client.CoreV1Api(k8s_api)
    a = cluster.node("a")
    cluster.pod(namespace, "web-0", a, {"app": "web"})
    apply(kubectl, cpol("good", namespace, {"app": "web"}))
    wait_for("good on a", lambda: (f := read_bundle(core, operator, a))
             and f"{namespace}/good@1" in f[0])  # fmt: skip
    found = read_bundle(core, operator, a)
    assert found is not None
    version = found[1].metadata.resource_version

    # Passes the apiserver's schema and CEL; the file-block safety rule is the operator's.
    bad = cpol("bad", namespace, {"app": "web"})
    bad["spec"] = {"file": {
        "selectors": [{"name": "creates", "operation": ["createFile"]}],
        "responses": [{"match": ["creates"], "actions": ["alert", "block"]}],
    }}  # fmt: skip
    apply(kubectl, bad)
    obj = wait_for("Invalid", lambda: (o := _policy(k8s_api, namespace, "bad"))
                   and (_ready(o) or {}).get("reason") == "Invalid" and o)  # fmt: skip
    message = (_ready(obj) or {})["message"]
    assert "file.responses[0].match[0]" in message and "targetFilePath" in message
    events = wait_for("the Invalid Event", lambda: kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=bad",
        "-o", "json").stdout.count('"Invalid"'))  # fmt: skip
    assert events == 1
    time.sleep(1.0)
    found = read_bundle(core, operator, a)
    assert found is not None
    assert found[1].metadata.resource_version == version  # the good policy's bundle untouched
    assert f"{namespace}/bad@1" not in found[0]

    # What the apiserver can check, it refuses at apply time.
    refused = cpol("refused", namespace, {"app": "web"})
    refused["spec"]["process"]["responses"][0]["actions"] = ["block"]
    result = kubectl("apply", "-f", "-", input=json.dumps(refused), check=False)
    assert result.returncode != 0 and "block needs alert" in result.stderr


def test_restart_rewrites_nothing(
    operator: Operator, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    namespace: str,
) -> None:  # fmt: skip
    core = client.CoreV1Api(k8s_api)
    a = cluster.node("a")
    cluster.pod(namespace, "web-0", a, {"app": "web"})
    apply(kubectl, cpol("steady", namespace, {"app": "web"}))
    wait_for("Applying", lambda: (_ready(_policy(k8s_api, namespace, "steady")) or {})
             .get("reason") == "Applying")  # fmt: skip

    def versions() -> dict[str, str]:
        cms: Any = core.list_namespaced_config_map(operator.namespace).items
        out: dict[str, str] = {cm.metadata.name: cm.metadata.resource_version for cm in cms}
        out["policy"] = _policy(k8s_api, namespace, "steady")["metadata"]["resourceVersion"]
        return out

    time.sleep(1.5)  # let the last pass settle
    before = versions()
    operator.stop()
    operator.start()
    time.sleep(1.5)
    assert versions() == before
    assert operator.metrics().get('stockade_operator_bundle_writes_total{op="write"}', 0) == 0
