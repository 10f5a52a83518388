"""One namespace's oversized policies never hold back another policy (issue 10, part 3).

The issue's case against the real apiserver: 8 ContainerPolicies of ~1.3 MB in
one namespace whose pods are on two nodes, and a ClusterContainerPolicy on
every node. Their bundle can't fit in a ConfigMap; before, its write was
refused (413) and retried in a tight loop, and the cluster policy's new
generation never reached those two nodes.
"""

from __future__ import annotations

import base64
import random
import string
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from stockade.operator.bundles import MAX_PAYLOAD_BYTES, configmap_name, payload_bytes
from tests.integration.conftest import fresh_namespace

from .conftest import Cluster, Kubectl, Operator, wait_for
from .test_operator import _ready, apply, cpol, mine, read_bundle

pytestmark = pytest.mark.integration
BIG = 8
BUNDLE_ERRORS = 'stockade_operator_errors_total{op="bundle"}'
BUNDLE_WRITES = 'stockade_operator_bundle_writes_total{op="write"}'
LEFT_OUT = "stockade_operator_policies_left_out"


def big_policy(name: str, namespace: str, seed: int) -> dict[str, Any]:
    """~1.3 MB: 20 file selectors of 256 random 240-character paths (they don't compress)."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    selectors = [
        {
            "name": f"s{i}",
            "operation": ["modifyFile"],
            "targetFilePath": ["/" + "".join(rng.choices(alphabet, k=240)) for _ in range(256)],
        }
        for i in range(20)
    ]
    return {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "file": {
                "selectors": selectors,
                "responses": [{"match": [s["name"] for s in selectors], "actions": ["log"]}],
            },
        },
    }


def everywhere(name: str, team: str, mode: str = "enforce") -> dict[str, Any]:
    return {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ClusterContainerPolicy",
        "metadata": {"name": name},
        "spec": {
            "mode": mode,
            "namespaceSelector": {"matchLabels": {"team": team}},
            "process": {
                "selectors": [{"name": "shells", "processName": ["bash", "sh"]}],
                "responses": [{"match": ["shells"], "actions": ["alert"]}],
            },
        },
    }


@pytest.fixture
def other_namespace(kubectl: Kubectl, k8s_api: client.ApiClient, namespace: str) -> Iterator[str]:
    with fresh_namespace(kubectl, k8s_api, f"{namespace}-other") as name:
        yield name


def _status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj: Any = custom.get_namespaced_custom_object(
        "stockade.dev", "v1alpha1", namespace, "containerpolicies", name
    )
    return dict(obj)


def holds(
    core: client.CoreV1Api, op: Operator, node: str, expected: set[str], *names: str
) -> Callable[[], bool]:
    """Whether the node's bundle holds exactly `expected` of the policies `names`."""
    return lambda: mine(core, op, node, *names) == expected


def with_reason(
    custom: client.CustomObjectsApi, namespace: str, name: str, reason: str
) -> Callable[[], dict[str, Any] | None]:
    """The policy, once its Ready condition has `reason`."""

    def probe() -> dict[str, Any] | None:
        obj = _status(custom, namespace, name)
        return obj if (_ready(obj) or {}).get("reason") == reason else None

    return probe


def test_oversized_policies_are_left_out_alone(
    operator: Operator, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    namespace: str, other_namespace: str, unique: str,
) -> None:  # fmt: skip
    core = client.CoreV1Api(k8s_api)
    custom = client.CustomObjectsApi(k8s_api)
    a, b, c = cluster.node("a"), cluster.node("b"), cluster.node("c")
    for ns in (namespace, other_namespace):
        core.patch_namespace(ns, {"metadata": {"labels": {"team": unique}}})
    cluster.pod(namespace, "web-0", a, {"app": "web"})
    cluster.pod(namespace, "web-1", b, {"app": "web"})
    cluster.pod(other_namespace, "db-0", c, {"app": "db"})
    wide = f"everywhere-{unique}"
    apply(kubectl, everywhere(wide, unique))
    for node in (a, b, c):
        wait_for(f"{wide}@1 on {node}", holds(core, operator, node, {f"{wide}@1"}, wide))
    errors_before = operator.metrics().get(BUNDLE_ERRORS, 0.0)

    started = time.monotonic()
    names = [f"big-{i}" for i in range(BIG)]
    for i, name in enumerate(names):  # in this order: big-0 is the oldest (then by name)
        custom.create_namespaced_custom_object(
            "stockade.dev", "v1alpha1", namespace, "containerpolicies",
            big_policy(name, namespace, seed=i),
        )  # fmt: skip
    print(f"created {BIG} policies in {time.monotonic() - started:.1f} s")
    apply(kubectl, everywhere(wide, unique, mode="audit"))  # generation 2

    # The cluster policy's new generation reaches every node; of the big ones only
    # the oldest fits next to it (each compiles to ~0.94 MB of gzip), on both nodes.
    bigs = [f"{namespace}/{name}" for name in names]
    for node in (a, b):
        expected = {f"{wide}@2", f"{bigs[0]}@1"}
        wait_for(
            f"{wide}@2 and big-0 alone on {node}",
            holds(core, operator, node, expected, wide, *bigs),
            timeout=120,
        )
    wait_for(f"{wide}@2 on {c}", holds(core, operator, c, {f"{wide}@2"}, wide, *bigs), 60)
    print(f"cluster policy generation 2 everywhere after {time.monotonic() - started:.1f} s")
    for node in (a, b):
        found = read_bundle(core, operator, node)
        assert found is not None
        cm = found[1]
        size = payload_bytes({"data": cm.data or {}, "binaryData": cm.binary_data or {}})
        print(f"{node}: bundle of {size} bytes")
        assert 900_000 < size <= MAX_PAYLOAD_BYTES

    # The others: refused on the two nodes, with the sizes and the limit.
    for name in names[1:]:
        obj = wait_for(
            f"{name} BundleTooLarge",
            with_reason(custom, namespace, name, "BundleTooLarge"),
            timeout=60,
        )
        message = (_ready(obj) or {})["message"]
        assert a in message and b in message and c not in message, message
        assert f"at most {MAX_PAYLOAD_BYTES} bytes" in message, message
        assert obj["status"]["nodes"]["targeted"] == 2
    print("message:", message)
    first = _ready(_status(custom, namespace, names[0])) or {}
    assert first.get("reason") == "Applying", first  # in both bundles, no sensor to apply it

    # Nothing was refused by the apiserver, and nothing is rewritten in a loop.
    assert operator.metrics().get(BUNDLE_ERRORS, 0.0) == errors_before
    writes = operator.metrics()[BUNDLE_WRITES]
    time.sleep(3.0)
    assert operator.metrics()[BUNDLE_WRITES] == writes
    assert operator.metrics().get(BUNDLE_ERRORS, 0.0) == errors_before

    assert operator.metrics().get(LEFT_OUT) == 2 * (BIG - 1)

    # Deleted, they leave the bundles and the count.
    for name in names:
        custom.delete_namespaced_custom_object(
            "stockade.dev", "v1alpha1", namespace, "containerpolicies", name
        )
    wait_for("nothing left out", lambda: operator.metrics().get(LEFT_OUT) == 0)
    for node in (a, b):
        wait_for(f"{wide} alone on {node}", holds(core, operator, node, {f"{wide}@2"}, wide, *bigs))
    kubectl("delete", "ccpol", wide)


def test_refused_write_backs_off(
    operator: Operator, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    namespace: str,
) -> None:  # fmt: skip
    """A write the apiserver refuses (here: an immutable ConfigMap in the bundle's place)
    is retried with a growing delay, reported as WriteFailed, and recovers by itself."""
    core = client.CoreV1Api(k8s_api)
    custom = client.CustomObjectsApi(k8s_api)
    a = cluster.node("a")
    squatter = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=configmap_name(a), namespace=operator.namespace),
        data={"not": "a bundle"},
        immutable=True,
    )
    core.create_namespaced_config_map(operator.namespace, squatter)
    errors_before = operator.metrics().get(BUNDLE_ERRORS, 0.0)
    cluster.pod(namespace, "web-0", a, {"app": "web"})
    apply(kubectl, cpol("guard", namespace, {"app": "web"}))
    obj = wait_for("WriteFailed", with_reason(custom, namespace, "guard", "WriteFailed"))
    message = (_ready(obj) or {})["message"]
    assert a in message and "422" in message, message
    started = time.monotonic()
    time.sleep(12.0)
    attempts = operator.metrics().get(BUNDLE_ERRORS, 0.0) - errors_before
    print(f"{attempts:.0f} failed writes in {time.monotonic() - started + 0.5:.1f} s")
    # back-off 1, 2, 4, 8 s (jittered to 0.5-1x): at most 5 in the first ~12 s
    assert 2 <= attempts <= 5

    core.delete_namespaced_config_map(configmap_name(a), operator.namespace)
    wait_for(
        "the bundle written after the back-off",
        lambda: mine(core, operator, a, f"{namespace}/guard") == {f"{namespace}/guard@1"},
        timeout=40,
    )
    wait_for("Applying", with_reason(custom, namespace, "guard", "Applying"))


def test_the_limit_is_the_apiservers(operator: Operator, k8s_api: client.ApiClient) -> None:
    """MAX_PAYLOAD_BYTES is what the apiserver takes, to the byte (binaryData counts decoded)."""
    core = client.CoreV1Api(k8s_api)

    def put(name: str, binary: int) -> int:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, namespace=operator.namespace),
            binary_data={"bundle.json.gz": base64.b64encode(b"x" * binary).decode()},
        )
        try:
            core.create_namespaced_config_map(operator.namespace, body)
        except client.ApiException as exc:
            return int(exc.status)
        core.delete_namespaced_config_map(name, operator.namespace)
        return 201

    assert put("limit-at", MAX_PAYLOAD_BYTES) == 201
    assert put("limit-over", MAX_PAYLOAD_BYTES + 1) == 422
