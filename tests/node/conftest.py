"""Fixtures for tests on a node stood in for by `stockade.local.kubelet`: the real apiserver,
Kubelets that register their Node and run pods' processes in cgroup v2 directories.

``core``      the apiserver's ``CoreV1Api``
``kubelets``  (function scope) ``kubelets(driver="systemd", runtime="containerd",
              root=CGROUP2)`` → a registered `Kubelet` on a new Node; every one is closed
              after the test
``kubelet``   (function scope) one such Kubelet with the defaults

Tests here need root (they make cgroups and move processes into them) and a cgroup v2
hierarchy; without either they are skipped, saying which.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from stockade.local.kubelet import CGROUP2, Kubelet
from tests.integration import conftest as integration
from tests.node.sensor import SensorProcess
from tests.operator import conftest as operator_suite
from tests.operator.conftest import Operator

# The integration suite's fixtures, shared rather than copied.
services_env = integration.services_env
kubeconfig = integration.kubeconfig
k8s_api = integration.k8s_api
kubectl = integration.kubectl
namespace = integration.namespace
unique = integration.unique

MakeKubelet = Callable[..., Kubelet]


@pytest.fixture(scope="session", autouse=True)
def _can_make_cgroups() -> None:
    if not (CGROUP2 / "cgroup.procs").exists():
        pytest.skip("no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup")
    if os.geteuid() != 0 or not os.access(CGROUP2, os.W_OK):
        pytest.skip(f"needs root and a writable {CGROUP2}: makes cgroups, moves processes in")


@pytest.fixture(scope="session")
def core(k8s_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api)


@pytest.fixture
def kubelets(core: client.CoreV1Api, unique: str) -> Iterator[MakeKubelet]:
    made: list[Kubelet] = []

    def make(driver: str = "systemd", runtime: str = "containerd", root: Path = CGROUP2) -> Kubelet:
        kubelet = Kubelet(core, f"node-{unique}-{len(made)}", root, driver, runtime)
        made.append(kubelet)
        kubelet.register()
        return kubelet

    try:
        yield make
    finally:
        for kubelet in made:
            kubelet.close()


@pytest.fixture
def kubelet(kubelets: MakeKubelet) -> Kubelet:
    return kubelets()


# The operator suite's session operator (its own namespace and Lease), shared rather than
# started twice: the sensor reads the bundles it writes.
operator_crds = operator_suite.operator_crds
operator = operator_suite.operator


@pytest.fixture(scope="session")
def custom(k8s_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api)


@pytest.fixture
def node_sensor(
    operator: Operator, kubelet: Kubelet, kubeconfig: str, tmp_path: Path
) -> Iterator[SensorProcess]:
    """The sensor of `kubelet`'s node, reading the session operator's bundles (not started:
    the test starts it when its story needs it)."""
    (tmp_path / "sensor").mkdir()
    sensor = SensorProcess(kubelet.node, operator.namespace, kubeconfig, tmp_path / "sensor")
    try:
        yield sensor
    finally:
        if sensor.proc is not None:
            sensor.stop()
