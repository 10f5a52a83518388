"""Fixtures for the Helm chart's tests: the pinned helm (built by services/install beside
kubectl) against the real apiserver of services/."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.integration.conftest import Kubectl, fresh_namespace
from tests.operator import conftest as operator_fixtures

# The integration and operator suites' fixtures, shared rather than copied.
services_env = operator_fixtures.services_env
kubeconfig = operator_fixtures.kubeconfig
k8s_api = operator_fixtures.k8s_api
kubectl = operator_fixtures.kubectl
namespace = operator_fixtures.namespace
unique = operator_fixtures.unique
operator_crds = operator_fixtures.operator_crds
cluster = operator_fixtures.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "stockade"


def kube_version() -> str:
    """The apiserver's version (services/versions.env), for `helm template`."""
    for line in (REPO / "services" / "versions.env").read_text().splitlines():
        if line.startswith("KUBE_VERSION="):
            return line.partition("=")[2]
    raise AssertionError("services/versions.env has no KUBE_VERSION")


class HelmError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{' '.join(self.cmd)} exited {self.returncode}\n{self.stderr}"


@dataclass
class Helm:
    binary: Path
    kubeconfig: str

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), *args]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "KUBECONFIG": self.kubeconfig},
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise HelmError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def template(self, release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
        """The chart rendered as `helm template` would hand it to a GitOps tool."""
        out = self("template", release, str(CHART), "--namespace", namespace,
                   "--kube-version", kube_version(), *values).stdout  # fmt: skip
        return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def helm(services_env: dict[str, str], kubeconfig: str) -> Helm:
    binary = Path(services_env["STOCKADE_BIN"]) / "helm"
    if not binary.is_file():
        pytest.skip(f"helm isn't built ({binary} missing): services/install builds it")
    return Helm(binary, kubeconfig)


@dataclass
class Release:
    name: str
    namespace: str
    notes: str

    @property
    def operator(self) -> str:
        return f"{self.name}-operator"

    @property
    def sensor(self) -> str:
        return f"{self.name}-sensor"


@pytest.fixture(scope="module")
def release(
    helm: Helm, kubectl: Kubectl, k8s_api: client.ApiClient, operator_crds: None
) -> Iterator[Release]:
    """The chart installed for real (`helm install`) into a fresh namespace; uninstalled after."""
    name = f"stk-{uuid.uuid4().hex[:6]}"
    with fresh_namespace(kubectl, k8s_api, name) as ns:
        out = helm("install", name, str(CHART), "--namespace", ns).stdout
        try:
            yield Release(name, ns, out)
        finally:
            helm("uninstall", name, "--namespace", ns)


def dry_run(kubectl: Kubectl, objects: list[dict[str, Any]]) -> None:
    """Server-side apply with dry-run=server: admission, schemas and RBAC escalation checks."""
    kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=helm", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))  # fmt: skip
