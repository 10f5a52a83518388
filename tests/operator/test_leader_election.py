"""Two replicas on one peering: only the higher priority writes; SIGTERM hands over."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from stockade.operator.bundles import POLICIES_ANNOTATION, configmap_name
from tests.integration.conftest import force_delete_namespace

from .conftest import Cluster, Kubectl, Operator, wait_for

pytestmark = pytest.mark.integration
WRITES = 'stockade_operator_bundle_writes_total{op="write"}'


def policies_on(core: client.CoreV1Api, namespace: str, node: str) -> set[str] | None:
    try:
        cm: Any = core.read_namespaced_config_map(configmap_name(node), namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return set(filter(None, cm.metadata.annotations[POLICIES_ANNOTATION].split("\n")))


@pytest.fixture
def pair(
    operator_crds: None, kubectl: Kubectl, kubeconfig: str, k8s_api: client.ApiClient,
    tmp_path: Path,
) -> Iterator[tuple[Operator, Operator]]:  # fmt: skip
    """Two operators sharing a fresh peering and bundle namespace; stopped and removed after."""
    suffix = os.urandom(4).hex()
    ns, peering = f"stockade-le-{suffix}", f"stockade-le-{suffix}"
    client.CoreV1Api(k8s_api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=ns))
    )
    kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}}
    ))  # fmt: skip
    high = Operator(kubeconfig, ns, peering, tmp_path / "high.log")
    low = Operator(kubeconfig, ns, peering, tmp_path / "low.log")
    try:
        yield high, low
    finally:
        high.stop()
        low.stop()
        kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found")
        force_delete_namespace(kubectl, k8s_api, ns)


def test_only_the_leader_writes_and_sigterm_hands_over(
    pair: tuple[Operator, Operator], cluster: Cluster, kubectl: Kubectl,
    k8s_api: client.ApiClient, namespace: str,
) -> None:  # fmt: skip
    high, low = pair
    core = client.CoreV1Api(k8s_api)
    high.start("--priority", "20")
    low.start("--priority", "10", wait=False)
    a = cluster.node("a")
    cluster.pod(namespace, "web-0", a, {"app": "web"})
    policy = {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": "web-shells", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "process": {
                "selectors": [{"name": "shells", "processName": ["bash", "sh"]}],
                "responses": [{"match": ["shells"], "actions": ["alert"]}],
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(policy))
    web = f"{namespace}/web-shells@1"
    wait_for("web on a", lambda: web in (policies_on(core, high.namespace, a) or ()))

    # The follower is up (metrics served) but paused: it never wrote, never synced.
    wait_for("the follower's metrics", low.metrics)
    time.sleep(2.0)  # room for a wrong write to show
    assert high.metrics().get(WRITES, 0) >= 1
    assert low.metrics().get(WRITES, 0) == 0
    assert low.metrics().get("stockade_operator_synced") == 0

    # SIGTERM the leader: kopf removes it from the peering and the follower takes over.
    high.stop()
    started = time.monotonic()
    wait_for("the follower's first full reconcile", low.synced, timeout=30)
    b = cluster.node("b")
    cluster.pod(namespace, "web-1", b, {"app": "web"})
    wait_for("web on b, written by the follower",
             lambda: web in (policies_on(core, low.namespace, b) or ()))  # fmt: skip
    print(f"takeover after SIGTERM: {time.monotonic() - started:.2f} s")
    assert low.metrics().get(WRITES, 0) >= 1
