"""Proof that the dev/test control plane is a real kube-apiserver (>= 1.31)
with CRDs, CEL validation rules and the status subresource."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

pytestmark = pytest.mark.integration


def test_version_at_least_1_31(k8s_api: k8s_client.ApiClient) -> None:
    info = k8s_client.VersionApi(k8s_api).get_code()
    major = int(re.sub(r"\D", "", info.major))
    minor = int(re.sub(r"\D", "", info.minor))
    assert (major, minor) >= (1, 31), info.git_version


def test_kubectl_fixture_talks_to_test_apiserver(kubectl: Any) -> None:
    out = kubectl("version", "-o", "json").stdout
    server = json.loads(out)["serverVersion"]["gitVersion"]
    assert server.startswith("v1.")
    assert "127.0.0.1" in kubectl("config", "view", "--minify", "-o", "json").stdout


def test_create_node_and_pod(k8s_api: k8s_client.ApiClient, namespace: str, unique: str) -> None:
    core = k8s_client.CoreV1Api(k8s_api)
    node_name = f"stockade-test-node-{unique}"
    node = k8s_client.V1Node(
        metadata=k8s_client.V1ObjectMeta(
            name=node_name, labels={"kubernetes.io/hostname": node_name}
        )
    )
    core.create_node(node)
    try:
        pod = k8s_client.V1Pod(
            metadata=k8s_client.V1ObjectMeta(name="web-0", labels={"app": "web"}),
            spec=k8s_client.V1PodSpec(
                node_name=node_name,
                containers=[k8s_client.V1Container(name="web", image="nginx:1.27")],
            ),
        )
        core.create_namespaced_pod(namespace, pod)

        got = core.read_namespaced_pod("web-0", namespace)
        assert got.spec is not None and got.metadata is not None
        assert got.spec.node_name == node_name
        assert got.metadata.uid
        on_node = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node_name}")
        assert [p.metadata.name for p in on_node.items if p.metadata] == ["web-0"]
        node_meta = core.read_node(node_name).metadata
        assert node_meta is not None and node_meta.labels is not None
        assert node_meta.labels["kubernetes.io/hostname"] == node_name
    finally:
        # No kubelet acknowledges graceful deletion: delete pods immediately.
        core.delete_namespaced_pod("web-0", namespace, grace_period_seconds=0)
        core.delete_node(node_name)


def _crd_yaml(group: str) -> str:
    return f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {{}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [replicas]
            properties:
              replicas: {{type: integer, minimum: 0}}
              minReplicas: {{type: integer, minimum: 0}}
            x-kubernetes-validations:
            - rule: "!has(self.minReplicas) || self.minReplicas <= self.replicas"
              message: "minReplicas must not exceed replicas"
          status:
            type: object
            properties:
              observed: {{type: integer}}
"""


@pytest.fixture
def widget_crd(kubectl: Any, k8s_api: k8s_client.ApiClient, unique: str) -> Iterator[str]:
    """A CRD ``widgets.t<random>.stockade.test`` with a CEL rule; yields the group."""
    group = f"t{unique}.stockade.test"
    kubectl("apply", "-f", "-", input=_crd_yaml(group))
    try:
        kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/widgets.{group}")
        # The new resource must be served before clients use it.
        custom = k8s_client.CustomObjectsApi(k8s_api)
        deadline = time.monotonic() + 30
        while True:
            try:
                custom.list_cluster_custom_object(group, "v1", "widgets")
                break
            except k8s_client.ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield group
    finally:
        kubectl("delete", "crd", f"widgets.{group}", "--ignore-not-found", "--wait=true")


def _widget(name: str, replicas: int, min_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",  # replaced below
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "minReplicas": min_replicas},
    }


def test_crd_cel_rule_rejects_violations(
    k8s_api: k8s_client.ApiClient, widget_crd: str, namespace: str
) -> None:
    custom = k8s_client.CustomObjectsApi(k8s_api)
    good = _widget("good", replicas=3, min_replicas=1) | {"apiVersion": f"{widget_crd}/v1"}
    custom.create_namespaced_custom_object(widget_crd, "v1", namespace, "widgets", good)

    bad = _widget("bad", replicas=1, min_replicas=3) | {"apiVersion": f"{widget_crd}/v1"}
    with pytest.raises(k8s_client.ApiException) as excinfo:
        custom.create_namespaced_custom_object(widget_crd, "v1", namespace, "widgets", bad)
    assert excinfo.value.status == 422
    body = json.loads(excinfo.value.body or "{}")
    assert body["reason"] == "Invalid"
    assert "minReplicas must not exceed replicas" in body["message"]
    causes = body["details"]["causes"]
    assert any(c["field"] == "spec" for c in causes), causes

    # Updates are validated too.
    with pytest.raises(k8s_client.ApiException) as excinfo:
        custom.patch_namespaced_custom_object(
            widget_crd, "v1", namespace, "widgets", "good", {"spec": {"minReplicas": 9}}
        )
    assert (
        "minReplicas must not exceed replicas" in json.loads(excinfo.value.body or "{}")["message"]
    )
    custom.delete_namespaced_custom_object(widget_crd, "v1", namespace, "widgets", "good")


def test_status_subresource_keeps_spec_and_generation(
    k8s_api: k8s_client.ApiClient, widget_crd: str, namespace: str
) -> None:
    custom = k8s_client.CustomObjectsApi(k8s_api)
    args = (widget_crd, "v1", namespace, "widgets")
    obj = _widget("w", replicas=2, min_replicas=1) | {"apiVersion": f"{widget_crd}/v1"}
    created: dict[str, Any] = custom.create_namespaced_custom_object(*args, obj)  # type: ignore[assignment]
    assert created["metadata"]["generation"] == 1

    # A status write that also tries to change spec: spec is ignored.
    status_patch = {"status": {"observed": 1}, "spec": {"replicas": 7}}
    after: dict[str, Any] = custom.patch_namespaced_custom_object_status(  # type: ignore[assignment]
        *args, "w", status_patch
    )
    assert after["status"] == {"observed": 1}
    assert after["spec"] == {"replicas": 2, "minReplicas": 1}
    assert after["metadata"]["generation"] == 1

    # A write to the main resource cannot change status, but bumps generation.
    main_patch = {"spec": {"replicas": 5}, "status": {"observed": 99}}
    after = custom.patch_namespaced_custom_object(*args, "w", main_patch)  # type: ignore[assignment]
    assert after["spec"]["replicas"] == 5
    assert after["status"] == {"observed": 1}
    assert after["metadata"]["generation"] == 2
    custom.delete_namespaced_custom_object(*args, "w")
