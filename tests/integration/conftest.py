"""Fixtures for integration tests against the real dev/test services.

The services are a real kube-apiserver + etcd (no kubelet, scheduler or
controller-manager) and a real single-node Elasticsearch, all on 127.0.0.1,
started by ``services/up`` (see docs/testing.md). The first fixture that needs
them runs ``services/up`` once per session: it is idempotent and takes about a
second when everything is already running, and starts (and, on a fresh
machine, installs/builds) whatever is missing.

Fixtures (all session-scoped unless noted):

``services_env``  the ``export`` lines of ``services/up`` as a dict
``kubeconfig``    path of the admin kubeconfig (client cert, system:masters)
``k8s_api``       ``kubernetes.client.ApiClient`` for that kubeconfig
``kubectl``       ``kubectl(*args, input=None, check=True) -> CompletedProcess``
                  running the pinned kubectl against the test apiserver
``es``            ``elasticsearch.Elasticsearch`` client
``namespace``     (function scope) a fresh namespace, force-emptied and
                  removed after the test (there is no namespace controller)
``unique``        (function scope) a short random suffix for object names

Every test must delete what it creates; prefer ``namespace`` for namespaced
objects and try/finally (or a fixture) for cluster-scoped ones.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest
from elasticsearch import Elasticsearch
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

REPO = Path(__file__).resolve().parents[2]
SERVICES_UP = REPO / "services" / "up"


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return (
            f"kubectl {shlex.join(self.cmd[1:])} exited {self.returncode}\n"
            f"stdout: {self.stdout}\nstderr: {self.stderr}"
        )


def parse_exports(text: str) -> dict[str, str]:
    """Parse ``export NAME=value`` lines (the stdout of services/up)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


@pytest.fixture(scope="session")
def services_env() -> dict[str, str]:
    """Start (or reuse) the services and return their environment."""
    proc = subprocess.run(
        [str(SERVICES_UP)], capture_output=True, text=True, timeout=3600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"services/up failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    env = parse_exports(proc.stdout)
    missing = {"KUBECONFIG", "ELASTICSEARCH_URL", "STOCKADE_BIN"} - env.keys()
    if missing:
        pytest.fail(f"services/up did not export {sorted(missing)}:\n{proc.stdout}")
    return env


@pytest.fixture(scope="session")
def kubeconfig(services_env: dict[str, str]) -> str:
    return services_env["KUBECONFIG"]


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: str) -> Iterator[k8s_client.ApiClient]:
    api: k8s_client.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig
    )
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def kubectl(services_env: dict[str, str], kubeconfig: str) -> Kubectl:
    binary = str(Path(services_env["STOCKADE_BIN"]) / "kubectl")
    env = {**os.environ, "KUBECONFIG": kubeconfig}

    def run(
        *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [binary, *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, env=env, timeout=120, check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    return run


@pytest.fixture(scope="session")
def es(services_env: dict[str, str]) -> Iterator[Elasticsearch]:
    user = services_env.get("ELASTICSEARCH_USERNAME")
    password = services_env.get("ELASTICSEARCH_PASSWORD")
    options: dict[str, Any] = {"request_timeout": 30}
    if user and password:
        options["basic_auth"] = (user, password)
    if services_env.get("ELASTICSEARCH_CA_CERTS"):
        options["ca_certs"] = services_env["ELASTICSEARCH_CA_CERTS"]
    client = Elasticsearch(services_env["ELASTICSEARCH_URL"], **options)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


def force_delete_namespace(kubectl: Kubectl, k8s_api: k8s_client.ApiClient, name: str) -> None:
    """Delete a namespace and everything in it.

    There is no controller-manager, so nothing empties a deleted namespace or
    removes its ``kubernetes`` finalizer: delete every listable namespaced
    resource in it ourselves (pods with grace period 0, as no kubelet will
    confirm), then finalize the namespace.
    """
    kinds = kubectl(
        "api-resources", "--namespaced=true", "--verbs=list,delete", "-o", "name"
    ).stdout.split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    kubectl(
        "delete", ",".join(kinds), "--all", "-n", name,
        "--grace-period=0", "--force", "--wait=false", "--ignore-not-found",
        check=False,
    )  # fmt: skip
    core = k8s_client.CoreV1Api(k8s_api)
    try:
        core.delete_namespace(name)
        ns = core.read_namespace(name)
    except k8s_client.ApiException as exc:
        if exc.status == 404:
            return
        raise
    ns.spec = k8s_client.V1NamespaceSpec(finalizers=[])
    try:
        core.replace_namespace_finalize(name, ns)
    except k8s_client.ApiException as exc:
        if exc.status != 404:
            raise


@contextmanager
def fresh_namespace(kubectl: Kubectl, k8s_api: k8s_client.ApiClient, name: str) -> Iterator[str]:
    """The namespace `name`, created now and removed (with all in it) at the end."""
    core = k8s_client.CoreV1Api(k8s_api)
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        force_delete_namespace(kubectl, k8s_api, name)


@pytest.fixture
def namespace(kubectl: Kubectl, k8s_api: k8s_client.ApiClient, unique: str) -> Iterator[str]:
    """A fresh namespace ``stockade-test-<random>``, removed after the test."""
    with fresh_namespace(kubectl, k8s_api, f"stockade-test-{unique}") as name:
        yield name


def install_crds(kubectl: Kubectl) -> list[str]:
    """Apply the generated CRDs (crds/) and wait until they are served; returns the `-f`
    arguments. `kubectl wait` right after the apply can find a CRD without
    `status.conditions` yet and fail ("accessor error"): it is asked again."""
    args = [a for f in sorted((REPO / "crds").glob("*.yaml")) for a in ("-f", str(f))]
    kubectl("apply", "--server-side", *args)
    for attempt in range(3):
        try:
            kubectl("wait", "--for=condition=Established", "--timeout=60s", *args)
            break
        except KubectlError:
            if attempt == 2:
                raise
            time.sleep(1)
    return args


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> Iterator[None]:
    """The generated CRDs (crds/) installed for the session."""
    args = install_crds(kubectl)
    try:
        yield
    finally:
        kubectl("delete", "--ignore-not-found", "--wait=false", *args)
