"""The chart's RBAC, proven with real tokens: TokenRequest tokens of the chart's
ServiceAccounts make the operator's and the sensor's actual API calls, and are refused
what neither needs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from stockade.operator.bundles import configmap_name
from stockade.policy.reports import Sensor
from stockade.sensor.report import FIELD_MANAGER, ReportWriter, report_body
from tests.integration.conftest import Kubectl
from tests.operator.conftest import (
    Cluster,
    Operator,
    service_account_token,
    token_kubeconfig,
    wait_for,
)
from tests.operator.test_operator import _policy, _ready, apply, cpol, read_bundle

from .conftest import Release

pytestmark = pytest.mark.integration

GROUP, VERSION, REPORTS = "stockade.dev", "v1alpha1", "nodepolicyreports"


def uid(obj: client.V1Node | client.V1Namespace) -> str:
    assert obj.metadata is not None and obj.metadata.uid
    return obj.metadata.uid


def as_token(k8s_api: client.ApiClient, token: str) -> client.ApiClient:
    """An API client of the admin's apiserver that authenticates with `token` only."""
    config = client.Configuration()
    config.host = k8s_api.configuration.host
    config.ssl_ca_cert = k8s_api.configuration.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(config)


def test_the_operator_reconciles_under_its_chart_token(
    release: Release, k8s_api: client.ApiClient, kubeconfig: str, kubectl: Kubectl,
    cluster: Cluster, namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    """`stockade operator` with a kubeconfig holding only a token of the chart's operator
    ServiceAccount: takes the Lease, writes a bundle and a status, refused nothing."""
    token = service_account_token(k8s_api, release.namespace, release.operator)
    config = token_kubeconfig(kubeconfig, release.operator, token, tmp_path / "sa.kubeconfig")
    op = Operator(str(config), release.namespace, tmp_path / "operator.log")
    try:
        op.start()  # took the Lease, listed everything, made a first full pass
        a = cluster.node("a")
        cluster.pod(namespace, "web-0", a, {"app": "web"})
        apply(kubectl, cpol("guard", namespace, {"app": "web"}))
        core = client.CoreV1Api(k8s_api)
        wait_for("guard and the chart's default policy in a's bundle",
                 lambda: (found := read_bundle(core, op, a)) and f"{namespace}/guard@1" in found[0]
                 and f"{release.name}-default@1" in found[0])  # fmt: skip
        wait_for("guard's status", lambda: (_ready(_policy(k8s_api, namespace, "guard"))
                 or {}).get("reason") == "Applying")  # fmt: skip
    finally:
        op.stop()
    log = op.log.read_text()
    assert "Forbidden" not in log and " 403" not in log, log[-2000:]
    assert "lease released" in log


def refused(call: Callable[[], Any]) -> int:
    """The HTTP status the call got (200: it went through)."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def sensor_pod(k8s_api: client.ApiClient, release: Release, node: str) -> client.V1Pod:
    """A pod of the chart's sensor DaemonSet as the apiserver has it once bound to `node`."""
    pod: client.V1Pod = client.CoreV1Api(k8s_api).create_namespaced_pod(
        release.namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(generate_name=f"{release.sensor}-"),
            spec=client.V1PodSpec(node_name=node, service_account_name=release.sensor,
                                  containers=[client.V1Container(name="sensor", image="x")]),
        ),
    )  # fmt: skip
    return pod


class SensorPod:
    """A sensor pod on node `node`, and a token bound to it (what the kubelet mounts in)."""

    def __init__(self, k8s_api: client.ApiClient, release: Release, node: str) -> None:
        self.node = node
        pod = sensor_pod(k8s_api, release, node)
        self.token = service_account_token(k8s_api, release.namespace, release.sensor, pod)
        self.api = as_token(k8s_api, self.token)


@pytest.fixture(scope="module")
def sensor_node(release: Release, k8s_api: client.ApiClient) -> Iterator[SensorPod]:
    core = client.CoreV1Api(k8s_api)
    name = f"n-{release.name}"
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield SensorPod(k8s_api, release, name)
    finally:
        reports = client.CustomObjectsApi(k8s_api)
        status = refused(
            lambda: reports.delete_cluster_custom_object(GROUP, VERSION, REPORTS, name)
        )
        core.delete_node(name)
        assert status in (200, 404)  # 404: a test failed before writing it


def write_report(api: client.ApiClient, node: str, node_uid: str) -> str | None:
    """The sensor's own report writer; None when written, else why not."""
    writer = ReportWriter(api, logging.getLogger(__name__))
    sensor = Sensor(instance_id="t", mode="kill", heartbeat_time=datetime.now(UTC))
    body = report_body(node=node, node_uid=node_uid, sensor=sensor, bundle=None, tallies=[],
                       dropped=0, errors=[])  # fmt: skip
    return None if writer._write(body) else writer.last_error


def watch_once(list_call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """A watch as the sensor's ListWatch opens one; raises ApiException when refused."""
    response = list_call(*args, watch=True, timeout_seconds=1, _preload_content=False, **kwargs)
    response.read()
    response.release_conn()


def test_the_sensors_calls_succeed_with_its_token(
    release: Release, sensor_node: SensorPod, k8s_api: client.ApiClient
) -> None:
    """Every call of docs/sensor.md ("What it reads, and how"), with the sensor's token."""
    core = client.CoreV1Api(sensor_node.api)
    node = sensor_node.node
    bundle = f"metadata.name={configmap_name(node)}"
    core.list_namespaced_config_map(release.namespace, field_selector=bundle)
    watch_once(core.list_namespaced_config_map, release.namespace, field_selector=bundle)
    core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")
    watch_once(core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node}")
    node_uid = uid(core.read_node(node))
    assert uid(core.read_namespace("kube-system"))
    assert write_report(sensor_node.api, node, node_uid) is None  # created
    assert write_report(sensor_node.api, node, node_uid) is None  # applied again
    written: Any = client.CustomObjectsApi(k8s_api).get_cluster_custom_object(
        GROUP, VERSION, REPORTS, node
    )
    managers = {entry["manager"] for entry in written["metadata"]["managedFields"]}
    assert managers == {FIELD_MANAGER}


def test_a_sensor_writes_only_its_own_nodes_report(
    release: Release, sensor_node: SensorPod, k8s_api: client.ApiClient, unique: str
) -> None:
    """The ValidatingAdmissionPolicy: the node its token's pod runs on, and no other."""
    core = client.CoreV1Api(k8s_api)
    other = f"n-{unique}-other"
    other_uid = uid(core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=other))))
    try:
        why = write_report(sensor_node.api, other, other_uid)
        assert why is not None and "403" in why and "its own node's" in why, why
        unbound = as_token(k8s_api, service_account_token(k8s_api, release.namespace,
                                                          release.sensor))  # fmt: skip
        why = write_report(unbound, other, other_uid)
        assert why is not None and "403" in why and "its own node's" in why, why
        with pytest.raises(ApiException) as exc:
            client.CustomObjectsApi(k8s_api).get_cluster_custom_object(
                GROUP, VERSION, REPORTS, other
            )
        assert exc.value.status == 404
    finally:
        core.delete_node(other)


def _policy_body(namespace: str) -> dict[str, Any]:
    return cpol("sneaky", namespace, {"app": "web"})


# (who, what, the call as that ServiceAccount)
FORBIDDEN: list[tuple[str, str, Callable[[client.ApiClient, Release, str], Any]]] = [
    ("sensor", "list Secrets", lambda api, r, node:
        client.CoreV1Api(api).list_namespaced_secret(r.namespace)),
    ("sensor", "list Secrets cluster-wide", lambda api, r, node:
        client.CoreV1Api(api).list_secret_for_all_namespaces()),
    ("sensor", "create a ContainerPolicy", lambda api, r, node:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, r.namespace, "containerpolicies", _policy_body(r.namespace))),
    ("sensor", "patch a ClusterContainerPolicy", lambda api, r, node:
        client.CustomObjectsApi(api).patch_cluster_custom_object(
            GROUP, VERSION, "clustercontainerpolicies", f"{r.name}-default", {"spec": {}})),
    ("sensor", "create a ConfigMap", lambda api, r, node:
        client.CoreV1Api(api).create_namespaced_config_map(r.namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=configmap_name(node))))),
    ("sensor", "delete its report", lambda api, r, node:
        client.CustomObjectsApi(api).delete_cluster_custom_object(GROUP, VERSION, REPORTS, node)),
    ("sensor", "read the policies", lambda api, r, node:
        client.CustomObjectsApi(api).list_cluster_custom_object(
            GROUP, VERSION, "clustercontainerpolicies")),
    ("sensor", "read another namespace's ConfigMaps", lambda api, r, node:
        client.CoreV1Api(api).list_namespaced_config_map("kube-system")),
    ("sensor", "read a namespace but kube-system", lambda api, r, node:
        client.CoreV1Api(api).read_namespace(r.namespace)),
    ("operator", "list Secrets", lambda api, r, node:
        client.CoreV1Api(api).list_secret_for_all_namespaces()),
    ("operator", "read a Secret", lambda api, r, node:
        client.CoreV1Api(api).read_namespaced_secret("any", r.namespace)),
    ("operator", "exec into a pod", lambda api, r, node:  # authorized before the upgrade
        client.CoreV1Api(api).connect_post_namespaced_pod_exec("any", r.namespace, command=["sh"])),
    ("operator", "write a policy's spec", lambda api, r, node:
        client.CustomObjectsApi(api).patch_cluster_custom_object(
            GROUP, VERSION, "clustercontainerpolicies", f"{r.name}-default", {"spec": {}})),
    ("operator", "create pods", lambda api, r, node:
        client.CoreV1Api(api).create_namespaced_pod(r.namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name="p"), spec=client.V1PodSpec(
                containers=[client.V1Container(name="c", image="x")])))),
    ("operator", "write reports", lambda api, r, node:
        client.CustomObjectsApi(api).delete_cluster_custom_object(GROUP, VERSION, REPORTS, node)),
]  # fmt: skip


@pytest.mark.parametrize(
    "who, what, call", FORBIDDEN, ids=[f"{who}: {what}" for who, what, _ in FORBIDDEN]
)
def test_what_each_must_not_do_is_refused(
    release: Release, sensor_node: SensorPod, k8s_api: client.ApiClient,
    who: str, what: str, call: Callable[[client.ApiClient, Release, str], Any],
) -> None:  # fmt: skip
    if who == "sensor":
        api = sensor_node.api
    else:
        api = as_token(k8s_api, service_account_token(k8s_api, release.namespace,
                                                      release.operator))  # fmt: skip
    assert refused(lambda: call(api, release, sensor_node.node)) == 403, json.dumps(what)
