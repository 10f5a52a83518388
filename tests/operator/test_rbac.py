"""operator/rbac.yaml is enough: the operator runs under exactly its rules, refused nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from .conftest import REPO, Cluster, Kubectl, Operator, service_account_kubeconfig, wait_for
from .test_operator import _policy, _ready, apply, cpol, read_bundle

pytestmark = pytest.mark.integration


def test_the_operator_runs_under_its_rbac(
    operator_crds: None, k8s_api: client.ApiClient, kubeconfig: str, kubectl: Kubectl,
    cluster: Cluster, namespace: str, unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    text = (REPO / "operator" / "rbac.yaml").read_text().replace("stockade-system", namespace)
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(text) if d]
    cluster_wide = []
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            doc["metadata"]["name"] += f"-{unique}"
            cluster_wide.append((doc["kind"].lower(), doc["metadata"]["name"]))
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] += f"-{unique}"
    account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    rules = [d for d in docs if d["kind"] != "ServiceAccount"]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                   "items": rules}))  # fmt: skip
    op = Operator(
        str(service_account_kubeconfig(
            k8s_api, kubeconfig, namespace, account, tmp_path / "sa.kubeconfig")),
        namespace, tmp_path / "operator.log",
    )  # fmt: skip
    try:
        op.start()  # took the Lease, listed everything, made a first full pass
        a = cluster.node("a")
        cluster.pod(namespace, "web-0", a, {"app": "web"})
        apply(kubectl, cpol("guard", namespace, {"app": "web"}))
        core = client.CoreV1Api(k8s_api)
        wait_for("guard in a's bundle", lambda: (found := read_bundle(core, op, a))
                 and f"{namespace}/guard@1" in found[0])  # fmt: skip
        wait_for("guard's status", lambda: (_ready(_policy(k8s_api, namespace, "guard"))
                 or {}).get("reason") == "Applying")  # fmt: skip
    finally:
        op.stop()
        for kind, name in cluster_wide:
            kubectl("delete", kind, name, "--ignore-not-found")
    log = op.log.read_text()
    assert "Forbidden" not in log and " 403" not in log, log[-2000:]
    assert "lease released" in log
