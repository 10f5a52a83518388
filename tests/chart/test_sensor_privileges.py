"""The sensor as the chart runs it: the chart's capabilities and nothing else, a token of
the chart's sensor ServiceAccount bound to its pod on its node. It loads, enforces a
policy the operator (under its own chart token) compiled, and writes its report."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from stockade.local.kubelet import CGROUP2, Kubelet
from tests.integration.conftest import Kubectl
from tests.node.sensor import SensorProcess
from tests.node.test_sensor import KILLED, block_exec
from tests.operator.conftest import Operator, service_account_token, token_kubeconfig, wait_for

from .conftest import Helm, Release
from .test_rbac import sensor_pod

pytestmark = pytest.mark.kernel


def chart_capabilities(helm: Helm) -> list[str]:
    """What the chart's DaemonSet adds (it drops every other)."""
    daemonset = next(o for o in helm.template("caps", "caps") if o["kind"] == "DaemonSet")
    context = daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"]
    added: list[str] = context["capabilities"]["add"]
    return added


def only(capabilities: list[str]) -> list[str]:
    """Run under root with only `capabilities` (its bounding set; no ambient, no inherited)."""
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in capabilities)])
    return ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--"]


@pytest.fixture
def node(k8s_api: client.ApiClient, unique: str) -> Iterator[Kubelet]:
    if os.geteuid() != 0 or not os.access(CGROUP2, os.W_OK):
        pytest.skip(f"needs root and a writable {CGROUP2}: makes cgroups, moves processes in")
    kubelet = Kubelet(client.CoreV1Api(k8s_api), f"node-{unique}", CGROUP2)
    kubelet.register()
    try:
        yield kubelet
    finally:
        kubelet.close()


@pytest.fixture
def chart_operator(
    release: Release, k8s_api: client.ApiClient, kubeconfig: str, tmp_path: Path
) -> Iterator[Operator]:
    token = service_account_token(k8s_api, release.namespace, release.operator)
    config = token_kubeconfig(kubeconfig, release.operator, token, tmp_path / "op.kubeconfig")
    op = Operator(str(config), release.namespace, tmp_path / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()


def sensor_kubeconfig(
    release: Release, k8s_api: client.ApiClient, kubeconfig: str, node: str, out: Path
) -> str:
    token = service_account_token(k8s_api, release.namespace, release.sensor,
                                  sensor_pod(k8s_api, release, node))  # fmt: skip
    return str(token_kubeconfig(kubeconfig, release.sensor, token, out))


def test_the_sensor_enforces_with_the_charts_capabilities_and_token(
    helm: Helm, release: Release, chart_operator: Operator, node: Kubelet,
    k8s_api: client.ApiClient, kubeconfig: str, kubectl: Kubectl, namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    tool = tmp_path / "bin" / "stk-tool"
    tool.parent.mkdir()
    shutil.copy("/bin/true", tool)
    web = node.start_pod(namespace, "web-1", {"app": "web"})
    config = sensor_kubeconfig(release, k8s_api, kubeconfig, node.node, tmp_path / "s.kubeconfig")
    sensor = SensorProcess(node.node, release.namespace, config, tmp_path / "sensor",
                           wrapper=only(chart_capabilities(helm)))  # fmt: skip
    (tmp_path / "sensor").mkdir()
    sensor.start()
    try:
        kubectl("apply", "-f", "-", input=block_exec("no-tool", namespace, {"app": "web"}, tool))
        wait_for("the exec killed in the web pod",
                 lambda: web.run("app", [str(tool)]).returncode == KILLED)  # fmt: skip
        report = wait_for("the node's report", lambda: _report(k8s_api, node.node))
        assert report["sensor"]["mode"] == "kill", report["sensor"]
    finally:
        sensor.stop()
    log = sensor.log.read_text()
    assert "Forbidden" not in log and " 403" not in log, log[-2000:]


def test_without_perfmon_the_sensor_stops_with_one_line(
    helm: Helm, release: Release, node: Kubelet, k8s_api: client.ApiClient, kubeconfig: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The capabilities test above can fail: one of the chart's taken away, nothing loads."""
    fewer = [c for c in chart_capabilities(helm) if c != "PERFMON"]
    config = sensor_kubeconfig(release, k8s_api, kubeconfig, node.node, tmp_path / "s.kubeconfig")
    sensor = SensorProcess(node.node, release.namespace, config, tmp_path / "sensor",
                           wrapper=only(fewer))  # fmt: skip
    (tmp_path / "sensor").mkdir()
    sensor.start(ready=False)
    assert sensor.proc is not None
    assert sensor.proc.wait(timeout=60) == 1
    assert "can't load the BPF programs" in sensor.log.read_text()


def _report(k8s_api: client.ApiClient, node: str) -> Any:
    try:
        found: Any = client.CustomObjectsApi(k8s_api).get_cluster_custom_object(
            "stockade.dev", "v1alpha1", "nodepolicyreports", node
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found
