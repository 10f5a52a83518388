"""Fixtures for the operator tests: the real apiserver, the CRDs, and the operator as a process.

The operator runs as `stockade operator` (a subprocess, as in production) in
its own namespace, with its own Lease, so parallel runs and other
suites' objects don't disturb it (it sees them, the tests ignore them).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client

from stockade.operator.metrics import scrape
from tests.integration import conftest as integration
from tests.integration.conftest import Kubectl, force_delete_namespace

# The integration suite's fixtures, shared rather than copied.
services_env = integration.services_env
kubeconfig = integration.kubeconfig
k8s_api = integration.k8s_api
kubectl = integration.kubectl
namespace = integration.namespace
unique = integration.unique

__all__ = [
    "Cluster", "Kubectl", "Operator", "service_account_kubeconfig", "service_account_token",
    "token_kubeconfig", "wait_for",
]  # fmt: skip

REPO = Path(__file__).resolve().parents[2]
STOCKADE = REPO / ".venv" / "bin" / "stockade"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Operator:
    """`stockade operator` as a child process; restartable."""

    def __init__(self, kubeconfig: str, namespace: str, log: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log = log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, wait: bool = True) -> None:
        """Start; `wait`: until the first full reconcile (a standby never does one)."""
        self.port = free_port()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(STOCKADE), "operator", "--namespace", self.namespace,
                    "--metrics-port", str(self.port),
                    "--cluster", "test-cluster", *extra,
                ],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": self.kubeconfig},
            )  # fmt: skip
        if wait:
            wait_for("the operator's first full reconcile", self.synced, timeout=60)

    def metrics(self) -> dict[str, float]:
        return scrape(self.port, timeout=2)

    def synced(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the operator exited {self.proc.returncode}; see {self.log}")
        return self.metrics().get("stockade_operator_synced") == 1.0

    def stop(self) -> None:
        """SIGTERM, as Kubernetes does: the operator releases its Lease."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def service_account_token(
    k8s_api: client.ApiClient, namespace: str, name: str, pod: client.V1Pod | None = None
) -> str:
    """A TokenRequest token of ServiceAccount `namespace/name`; bound to `pod` if given
    (the apiserver then names the pod's node in the token's user extra)."""
    spec = client.V1TokenRequestSpec(audiences=[])
    if pod is not None:
        assert pod.metadata is not None
        spec.bound_object_ref = client.V1BoundObjectReference(
            api_version="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
        )
    request = client.CoreV1Api(k8s_api).create_namespaced_service_account_token(
        name, namespace, client.AuthenticationV1TokenRequest(spec=spec)
    )
    assert request.status is not None and request.status.token
    return request.status.token


def token_kubeconfig(kubeconfig: str, user: str, token: str, out: Path) -> Path:
    """The admin kubeconfig's cluster with `token` as its only user."""
    admin = yaml.safe_load(Path(kubeconfig).read_text())
    admin["users"] = [{"name": user, "user": {"token": token}}]
    for context in admin["contexts"]:
        context["context"]["user"] = user
    out.write_text(yaml.safe_dump(admin))
    return out


def service_account_kubeconfig(
    k8s_api: client.ApiClient, kubeconfig: str, namespace: str, name: str, out: Path
) -> Path:
    """A kubeconfig for ServiceAccount `namespace/name` (created here), by a bound token."""
    client.CoreV1Api(k8s_api).create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    token = service_account_token(k8s_api, namespace, name)
    return token_kubeconfig(kubeconfig, name, token, out)


@pytest.fixture(scope="session")
def operator_crds(kubectl: Kubectl) -> Iterator[None]:
    integration.install_crds(kubectl)
    yield


@pytest.fixture(scope="session")
def operator(
    operator_crds: None,
    kubectl: Kubectl,
    kubeconfig: str,
    k8s_api: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    suffix = os.urandom(4).hex()
    ns = f"stockade-op-{suffix}"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = Operator(kubeconfig, ns, log)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        force_delete_namespace(kubectl, k8s_api, ns)


class Cluster:
    """Creates Nodes and Pods as a kubelet-less cluster would have them; deletes them after."""

    def __init__(self, api: client.ApiClient, unique: str) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.unique = unique
        self.nodes: list[str] = []
        self.reports: list[str] = []

    def node(self, short: str) -> str:
        name = f"n-{self.unique}-{short}"
        self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
        self.nodes.append(name)
        return name

    def delete_node(self, name: str) -> None:
        self.core.delete_node(name)
        self.nodes.remove(name)

    def pod(
        self,
        namespace: str,
        name: str,
        node: str | None,
        labels: dict[str, str],
        phase: str = "Running",
    ) -> None:
        body = client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
            spec=client.V1PodSpec(
                node_name=node, containers=[client.V1Container(name="c", image="nginx")]
            ),
        )
        self.core.create_namespaced_pod(namespace, body)
        if node is not None:
            self.core.patch_namespaced_pod_status(name, namespace, {"status": {"phase": phase}})

    def delete_pod(self, namespace: str, name: str) -> None:
        self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    def report(self, node: str, body: dict[str, Any]) -> None:
        """Write the node's NodePolicyReport whole, as its sensor would."""
        obj = {
            "apiVersion": "stockade.dev/v1alpha1",
            "kind": "NodePolicyReport",
            "metadata": {"name": node},
            **body,
        }
        try:
            current: Any = self.custom.get_cluster_custom_object(
                "stockade.dev", "v1alpha1", "nodepolicyreports", node
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            self.custom.create_cluster_custom_object(
                "stockade.dev", "v1alpha1", "nodepolicyreports", obj
            )
            self.reports.append(node)
            return
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self.custom.replace_cluster_custom_object(
            "stockade.dev", "v1alpha1", "nodepolicyreports", node, obj
        )

    def cleanup(self) -> None:
        for node in self.reports:
            try:
                self.custom.delete_cluster_custom_object(
                    "stockade.dev", "v1alpha1", "nodepolicyreports", node
                )
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        for node in self.nodes:
            try:
                self.core.delete_node(node)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
def cluster(k8s_api: client.ApiClient, unique: str) -> Iterator[Cluster]:
    made = Cluster(k8s_api, unique)
    try:
        yield made
    finally:
        made.cleanup()
