"""Two replicas on one Lease: one writes; SIGTERM hands over; a leader that can't renew
exits, and writes nothing once past its renew deadline.

Short timings (6 s lease, 4 s renew deadline, 1 s retry) keep the takeovers quick.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from stockade.operator.bundles import POLICIES_ANNOTATION, configmap_name
from stockade.operator.election import Elector, NotLeading, Timing
from stockade.operator.kube import Kube
from tests.integration.conftest import force_delete_namespace

from .conftest import Cluster, Kubectl, Operator, wait_for

pytestmark = pytest.mark.integration
WRITES = 'stockade_operator_bundle_writes_total{op="write"}'
FAST = ("--lease-duration", "6", "--renew-deadline", "4", "--retry-period", "1")


def bundle(core: client.CoreV1Api, namespace: str, node: str) -> Any:
    try:
        return core.read_namespaced_config_map(configmap_name(node), namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def policies_on(core: client.CoreV1Api, namespace: str, node: str) -> set[str] | None:
    cm = bundle(core, namespace, node)
    if cm is None:
        return None
    return set(filter(None, cm.metadata.annotations[POLICIES_ANNOTATION].split("\n")))


def web_policy(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "process": {
                "selectors": [{"name": "shells", "processName": ["bash", "sh"]}],
                "responses": [{"match": ["shells"], "actions": ["alert"]}],
            },
        },
    }


def holder(k8s_api: client.ApiClient, namespace: str) -> str:
    lease: Any = client.CoordinationV1Api(k8s_api).read_namespaced_lease(
        "stockade-operator", namespace
    )
    return str(lease.spec.holder_identity or "")


@pytest.fixture
def pair(
    operator_crds: None, kubectl: Kubectl, kubeconfig: str, k8s_api: client.ApiClient,
    tmp_path: Path,
) -> Iterator[tuple[Operator, Operator]]:  # fmt: skip
    """Two operators sharing a fresh bundle namespace (and Lease); stopped and removed after."""
    ns = f"stockade-le-{os.urandom(4).hex()}"
    client.CoreV1Api(k8s_api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=ns))
    )
    first = Operator(kubeconfig, ns, tmp_path / "first.log")
    second = Operator(kubeconfig, ns, tmp_path / "second.log")
    try:
        yield first, second
    finally:
        for op in (first, second):
            if op.proc is not None and op.proc.poll() is None:
                op.proc.send_signal(signal.SIGCONT)
            op.stop()
        force_delete_namespace(kubectl, k8s_api, ns)


def test_only_the_leader_writes_and_sigterm_hands_over(
    pair: tuple[Operator, Operator], cluster: Cluster, kubectl: Kubectl,
    k8s_api: client.ApiClient, namespace: str,
) -> None:  # fmt: skip
    first, second = pair
    core = client.CoreV1Api(k8s_api)
    first.start(*FAST)  # creates the Lease and holds it
    second.start(*FAST, wait=False)
    assert first.proc is not None
    assert f"/{first.proc.pid}/" in holder(k8s_api, first.namespace)
    a = cluster.node("a")
    cluster.pod(namespace, "web-0", a, {"app": "web"})
    kubectl("apply", "-f", "-", input=json.dumps(web_policy(namespace, "web-shells")))
    web = f"{namespace}/web-shells@1"
    wait_for("web on a", lambda: web in (policies_on(core, first.namespace, a) or ()))

    # The standby serves metrics but watches nothing and writes nothing.
    wait_for("the standby's metrics", second.metrics)
    time.sleep(2.0)  # room for a wrong write to show
    assert first.metrics().get(WRITES, 0) >= 1
    assert second.metrics().get(WRITES, 0) == 0
    assert second.metrics().get("stockade_operator_leader") == 0
    assert second.metrics().get("stockade_operator_synced") == 0

    # SIGTERM the leader: it releases the Lease and the standby takes over at its next try.
    started = time.monotonic()
    first.stop()
    wait_for("the standby's first full reconcile", second.synced, timeout=30)
    print(f"takeover after SIGTERM: {time.monotonic() - started:.2f} s")
    b = cluster.node("b")
    cluster.pod(namespace, "web-1", b, {"app": "web"})
    wait_for("web on b, written by the new leader",
             lambda: web in (policies_on(core, second.namespace, b) or ()))  # fmt: skip
    assert second.metrics().get(WRITES, 0) >= 1


def test_a_leader_frozen_past_its_lease_exits_without_writing(
    pair: tuple[Operator, Operator], cluster: Cluster, kubectl: Kubectl,
    k8s_api: client.ApiClient, namespace: str,
) -> None:  # fmt: skip
    """Issue 12's reproduction: leader A paused, B takes over, a policy is deleted while B
    leads, B stops, A resumes. A must not rewrite the deleted policy (nor anything): it
    is past its renew deadline, so it exits."""
    first, second = pair
    core = client.CoreV1Api(k8s_api)
    custom = client.CustomObjectsApi(k8s_api)
    first.start(*FAST)
    second.start(*FAST, wait=False)
    a = cluster.node("a")
    cluster.pod(namespace, "web-0", a, {"app": "web"})
    for name in ("p1", "p2"):
        kubectl("apply", "-f", "-", input=json.dumps(web_policy(namespace, name)))
    both = {f"{namespace}/p1@1", f"{namespace}/p2@1"}
    wait_for("p1 and p2 on a", lambda: policies_on(core, first.namespace, a) == both)
    assert first.proc is not None and second.proc is not None

    first.proc.send_signal(signal.SIGSTOP)  # its renewals stop with it
    try:
        started = time.monotonic()
        wait_for("the standby's takeover", second.synced, timeout=30)
        print(f"takeover of a frozen leader: {time.monotonic() - started:.2f} s")
        assert f"/{second.proc.pid}/" in holder(k8s_api, second.namespace)
        kubectl("delete", "containerpolicy", "p2", "-n", namespace)
        only_p1 = {f"{namespace}/p1@1"}
        wait_for("p2 gone from a", lambda: policies_on(core, second.namespace, a) == only_p1)
        second.stop()  # releases the Lease: only A's own deadline stands in its way
        before = bundle(core, second.namespace, a).metadata.resource_version
        p1: Any = custom.get_namespaced_custom_object(
            "stockade.dev", "v1alpha1", namespace, "containerpolicies", "p1"
        )
    finally:
        first.proc.send_signal(signal.SIGCONT)
    assert first.proc.wait(timeout=15) == 1
    assert "leadership lost" in first.log.read_text()
    time.sleep(2.0)  # room for a wrong write to land
    after = bundle(core, first.namespace, a)
    assert after.metadata.resource_version == before, "the frozen leader wrote a bundle"
    assert policies_on(core, first.namespace, a) == only_p1
    p1_after: Any = custom.get_namespaced_custom_object(
        "stockade.dev", "v1alpha1", namespace, "containerpolicies", "p1"
    )
    assert p1_after["metadata"]["resourceVersion"] == p1["metadata"]["resourceVersion"]


def test_no_write_starts_after_the_renew_deadline(
    k8s_api: client.ApiClient, namespace: str, unique: str
) -> None:
    """A leader whose renewals stop (here: no renewal thread) makes no write once its
    renew deadline has passed, before another replica could take the Lease."""
    timing = Timing(lease_duration=3.0, renew_deadline=2.0, retry_period=0.5)
    elector = Elector(k8s_api, namespace, f"gate-{unique}", "test", timing)
    assert elector.try_acquire()
    kube = Kube(k8s_api, namespace)
    kube.write_timeout = elector.write_timeout
    core = client.CoreV1Api(k8s_api)

    def body(name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}

    async def writes() -> None:
        await kube.put_configmap(body("before-deadline"), None)
        await asyncio.sleep(timing.renew_deadline + 0.1)
        with pytest.raises(NotLeading):
            await kube.put_configmap(body("after-deadline"), None)

    asyncio.run(writes())
    core.read_namespaced_config_map("before-deadline", namespace)
    with pytest.raises(client.ApiException) as refused:
        core.read_namespaced_config_map("after-deadline", namespace)
    assert refused.value.status == 404
