"""A full pass repairs bundle ConfigMaps deleted or tampered with (issue 12).

Each full pass lists the stored bundles again and checks each one's content
against its hash annotation; one that is missing or disputed is written again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from stockade.operator.bundles import configmap_name
from stockade.policy.bundle import HASH_ANNOTATION, from_configmap

from .conftest import Cluster, Kubectl, Operator, wait_for

pytestmark = pytest.mark.integration
RESYNC = 3.0  # seconds between full passes


def stored(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    try:
        return core.read_namespaced_config_map(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_deleted_and_tampered_bundles_are_healed_within_one_full_pass(
    operator_crds: None, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    kubeconfig: str, namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    core = client.CoreV1Api(k8s_api)
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log")
    op.start("--standalone", "--resync", str(RESYNC))
    try:
        a = cluster.node("a")
        cluster.pod(namespace, "web-0", a, {"app": "web"})
        policy = {
            "apiVersion": "stockade.dev/v1alpha1",
            "kind": "ContainerPolicy",
            "metadata": {"name": "web-shells", "namespace": namespace},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "process": {
                    "selectors": [{"name": "shells", "processName": ["bash"]}],
                    "responses": [{"match": ["shells"], "actions": ["alert"]}],
                },
            },
        }
        kubectl("apply", "-f", "-", input=json.dumps(policy))
        name = configmap_name(a)
        good = wait_for("a's bundle with the policy", lambda: (
            cm if (cm := stored(core, namespace, name)) is not None
            and "web-shells" in str(cm.metadata.annotations) else None))  # fmt: skip
        good_hash = good.metadata.annotations[HASH_ANNOTATION]

        core.delete_namespaced_config_map(name, namespace)
        started = time.monotonic()
        healed = wait_for("the deleted bundle back", lambda: stored(core, namespace, name),
                          timeout=2 * RESYNC + 5)  # fmt: skip
        print(f"deleted bundle rewritten after {time.monotonic() - started:.2f} s")
        assert healed.metadata.annotations[HASH_ANNOTATION] == good_hash

        healed.data = {"bundle.json": '{"tampered": true}'}
        healed.binary_data = None
        core.replace_namespaced_config_map(name, namespace, healed)
        started = time.monotonic()

        def untampered() -> bool:
            cm = stored(core, namespace, name)
            try:
                bundle = from_configmap(cm.data, cm.binary_data, cm.metadata.annotations)
            except Exception:
                return False
            return bool(bundle.hash == good_hash)

        wait_for("the tampered bundle rewritten", untampered, timeout=2 * RESYNC + 5)
        print(f"tampered bundle rewritten after {time.monotonic() - started:.2f} s")
    finally:
        op.stop()
