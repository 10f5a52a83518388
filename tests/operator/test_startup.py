"""The operator never waits silently for what it needs to start (issue 9).

kopf, given a peering name whose ClusterKopfPeering doesn't exist, logs one
line and waits forever. The operator creates the object when it may, and
otherwise stops with an error that says what to apply.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from .conftest import STOCKADE, Kubectl, Operator

pytestmark = pytest.mark.integration


def test_missing_peering_object_is_created(
    operator_crds: None,
    kubectl: Kubectl,
    kubeconfig: str,
    namespace: str,
    unique: str,
    tmp_path: Path,
) -> None:
    peering = f"stockade-missing-{unique}"
    assert kubectl("get", "clusterkopfpeering", peering, check=False).returncode != 0
    op = Operator(kubeconfig, namespace, peering, tmp_path / "operator.log")
    try:
        op.start()  # waits for the first full reconcile: the replica was elected
        kubectl("get", "clusterkopfpeering", peering)
    finally:
        op.stop()
        kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found")


@pytest.fixture
def limited_kubeconfig(
    k8s_api: client.ApiClient, kubeconfig: str, namespace: str, unique: str, tmp_path: Path
) -> Iterator[Path]:
    """A ServiceAccount token that may read the peering object but not create it."""
    core = client.CoreV1Api(k8s_api)
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    name = f"stockade-limited-{unique}"
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=name),
            rules=[
                client.V1PolicyRule(
                    api_groups=["kopf.dev"], resources=["clusterkopfpeerings"], verbs=["get"]
                )
            ],
        )
    )
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
        )
    )
    request = core.create_namespaced_service_account_token(
        name,
        namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    )
    assert request.status is not None
    token = request.status.token
    admin = yaml.safe_load(Path(kubeconfig).read_text())
    admin["users"] = [{"name": name, "user": {"token": token}}]
    for context in admin["contexts"]:
        context["context"]["user"] = name
    path = tmp_path / "limited.kubeconfig"
    path.write_text(json.dumps(admin))
    try:
        yield path
    finally:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


def test_peering_it_may_not_create_stops_with_what_to_apply(
    operator_crds: None, limited_kubeconfig: Path, unique: str
) -> None:
    proc = subprocess.run(
        [
            str(STOCKADE),
            "operator",
            "--peering",
            f"stockade-missing-{unique}",
            "--metrics-port",
            "0",
        ],
        env={"KUBECONFIG": str(limited_kubeconfig), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("stockade operator:")]
    assert len(lines) == 1, proc.stderr
    assert "kubectl apply -f operator/kopf-peering.yaml" in lines[0]
    assert "403" in lines[0]
    assert "Traceback" not in proc.stderr
