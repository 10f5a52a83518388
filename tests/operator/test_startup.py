"""The operator never waits silently for what it needs to start (issue 9, issue 12).

A replica stands by until it holds the leader-election Lease. A Lease it may
not read or create would make that wait endless: it stops at once with one
line naming the Lease, the refusal and the RBAC to apply instead.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from .conftest import STOCKADE, service_account_kubeconfig

pytestmark = pytest.mark.integration


@pytest.fixture
def limited_kubeconfig(
    k8s_api: client.ApiClient, kubeconfig: str, namespace: str, unique: str, tmp_path: Path
) -> Path:
    """A ServiceAccount token that may read Leases in `namespace` but not create one."""
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    name = f"stockade-limited-{unique}"
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name=name),
            rules=[
                client.V1PolicyRule(
                    api_groups=["coordination.k8s.io"], resources=["leases"], verbs=["get"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name=name
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
        ),
    )
    # The namespace fixture deletes the Role, its binding and the ServiceAccount.
    return service_account_kubeconfig(
        k8s_api, kubeconfig, namespace, name, tmp_path / "limited.kubeconfig"
    )


def test_lease_it_may_not_create_stops_with_one_line(
    operator_crds: None, limited_kubeconfig: Path, namespace: str
) -> None:
    proc = subprocess.run(
        [str(STOCKADE), "operator", "--namespace", namespace, "--metrics-port", "0"],
        env={"KUBECONFIG": str(limited_kubeconfig), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("stockade operator:")]
    assert len(lines) == 1, proc.stderr
    assert f"may not create Lease {namespace}/stockade-operator (403 Forbidden)" in lines[0]
    assert "charts/stockade/templates/operator-rbac.yaml" in lines[0]
    assert "Traceback" not in proc.stderr
