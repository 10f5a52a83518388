"""The whole loop on this machine, started once for the e2e session: the one layer that knows
how the stack is brought up (the scenarios only use `Stack`).

Today it is assembled from the component suites' fixtures and helpers — the real services
(`services/up`, honouring the STOCKADE_* ports and state directory), the CRDs, the session
operator (`stockade operator`), the kubelet stand-in's Node, the seed's default policy as a
ClusterContainerPolicy (as the chart installs it), and `stockade sensor --node-name NODE
--output elasticsearch:URL` for that node — so that it can be switched to `stockade up`
without touching a scenario.

``stack``       (session) the running `Stack`
``namespaces``  (function) ``namespaces(short, labels={}) -> name``: a namespace of the
                session's own, its pods (processes, cgroups) and objects removed after
``story``       (function) the test's log: ``story("step")``, ``story.wait("what", probe)``,
                each line with the seconds since the test started
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from elasticsearch import Elasticsearch
from kubernetes import client

from stockade.local.kubelet import Kubelet, Pod
from stockade.policy.bundle import HASH_ANNOTATION
from tests.elastic.conftest import start_elasticsearch, stop_elasticsearch
from tests.integration import conftest as integration
from tests.integration.conftest import Kubectl, fresh_namespace
from tests.node import conftest as node_suite
from tests.node.sensor import SensorProcess
from tests.node.test_sensor import node_report, policy_status, ready_reason
from tests.operator import conftest as operator_suite
from tests.operator.conftest import Operator, wait_for
from tests.operator.test_operator import read_bundle

__all__ = ["Pod", "Stack", "Story", "run"]

REPO = Path(__file__).resolve().parents[1]
IN_VM = os.environ.get("STOCKADE_VM") == "1"
# e2e/vm runs inside the test VM only (tests/kernel/test_lsm_vm.py boots it), with a
# standalone sensor: nothing of the stack below.
collect_ignore = [] if IN_VM else ["vm"]

ES_NAMESPACE = "default"  # the data streams users query: logs-cloud_defend.*-default
ALERTS = f"logs-cloud_defend.alerts-{ES_NAMESPACE}"
T = TypeVar("T")

# The component suites' fixtures, shared rather than copied.
services_env = integration.services_env
kubeconfig = integration.kubeconfig
k8s_api = integration.k8s_api
kubectl = integration.kubectl
es = integration.es
operator_crds = operator_suite.operator_crds
operator = operator_suite.operator
_can_make_cgroups = node_suite._can_make_cgroups

log = logging.getLogger("e2e")
logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # a line per request


class Story:
    """A test's readable log: each step with the seconds since the test started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, step: str) -> None:
        log.info(f"[{time.monotonic() - self.t0:6.2f} s] {step}")

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
        t = time.monotonic()
        got = wait_for(what, probe, timeout)
        self(f"  … {what}: after {time.monotonic() - t:.2f} s")
        return got


@dataclass
class Stack:
    """The running stack, and what a user would do and look at."""

    env: dict[str, str]
    kubectl: Kubectl
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    es: Elasticsearch
    operator: Operator
    kubelet: Kubelet
    sensor: SensorProcess
    run_id: str  # the prefix of every namespace this session makes
    default_policy: str  # the seed's default policy's ClusterContainerPolicy
    sensor_mode: str = ""  # what the sensor probed at its last start

    @property
    def node(self) -> str:
        return self.kubelet.node

    # --- the parts, stopped and started ---------------------------------------------------

    def start_sensor(self, kubeconfig: str | None = None) -> None:
        """`stockade sensor` for the node, writing to Elasticsearch; returns once a bundle
        is in force (its cached one counts)."""
        url = self.env["ELASTICSEARCH_URL"]
        self.sensor.start(
            "--output", f"elasticsearch:{url}", "--es-namespace", ES_NAMESPACE,
            kubeconfig=kubeconfig,
        )  # fmt: skip
        self.sensor_mode = str([line["mode"] for line in self.sensor_log() if "mode" in line][-1])

    def stop_elasticsearch(self) -> None:
        stop_elasticsearch(self.env)

    def start_elasticsearch(self) -> None:
        start_elasticsearch()

    def sensor_log(self) -> list[dict[str, Any]]:
        """The sensor's log: JSON lines, every one (anything else fails the test)."""
        return self.sensor.log_lines()

    def mode(self) -> str:
        """The enforcement mode the sensor probed at its last start."""
        return self.sensor_mode

    def blocked(self, returncode: int) -> bool:
        """Whether a process's exit status is a block's: killed (kill mode), or the
        operation refused with EPERM (lsm, fmodret: `cp` exits 1, an exec 126)."""
        return returncode == -9 if self.mode() == "kill" else returncode in (1, 126)

    def blocked_outcome(self) -> str:
        """`cloud_defend.outcome` of a blocked operation in the sensor's mode."""
        return "killed" if self.mode() == "kill" else "denied"

    # --- what a user does -----------------------------------------------------------------

    def apply(self, *manifests: Mapping[str, Any], check: bool = True) -> Any:
        """`kubectl apply -f -` of the manifests; the CompletedProcess."""
        text = "\n---\n".join(json.dumps(m) for m in manifests)
        return self.kubectl("apply", "-f", "-", input=text, check=check)

    def start_pod(self, namespace: str, name: str, labels: Mapping[str, str]) -> Pod:
        """A pod started on the node, returned once the sensor knows it (its pod, sandbox and
        container cgroups listed) and the default policy is in force there."""
        known = self.sensor.metrics()["stockade_sensor_containers"]
        pod = self.kubelet.start_pod(namespace, name, labels)
        wait_for(f"the sensor to know pod {namespace}/{name}", lambda: self.sensor.metrics()
                 ["stockade_sensor_containers"] >= known + 3)  # fmt: skip
        wait_for("the default policy in force on the node", lambda: self.in_force(
            None, self.default_policy))  # fmt: skip
        return pod

    # --- what a user looks at -------------------------------------------------------------

    def row(self, namespace: str | None, name: str) -> dict[str, str]:
        """`kubectl get containerpolicies NAME` (namespace None: clustercontainerpolicies),
        by column (a column not filled yet: "")."""
        kind = ["containerpolicies", "-n", namespace] if namespace else ["clustercontainerpolicies"]
        header, values = self.kubectl("get", *kind, name).stdout.splitlines()
        starts = [m.start() for m in re.finditer(r"\S+", header)]
        return {
            header[a:b].strip(): values[a:b].strip()
            for a, b in zip(starts, [*starts[1:], None], strict=True)
        }

    def policy(self, namespace: str, name: str) -> dict[str, Any]:
        """The ContainerPolicy as stored."""
        obj: Any = self.custom.get_namespaced_custom_object(
            "stockade.dev", "v1alpha1", namespace, "containerpolicies", name
        )
        return dict(obj)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return policy_status(self.custom, namespace, name)

    def ready(self, namespace: str, name: str) -> str | None:
        """The policy's Ready condition as `status/reason`."""
        return ready_reason(self.status(namespace, name))

    def in_force(self, namespace: str | None, name: str) -> bool:
        """Whether the node's bundle holds the policy and its sensor reports that bundle in
        force (a node whose last pod went has an empty bundle until the next pod comes)."""
        found = self.bundle()
        if found is None or not any(p.startswith(f"{namespace}/{name}@" if namespace
                                                 else f"{name}@") for p in found[0]):  # fmt: skip
            return False
        report = node_report(self.custom, self.node)
        return bool(
            report.get("bundle", {}).get("hash") == found[1].metadata.annotations[HASH_ANNOTATION]
        )

    def bundle(self) -> tuple[set[str], Any] | None:
        """The node's bundle: its policies as `namespace/name@generation`, its ConfigMap."""
        return read_bundle(self.core, self.operator, self.node)

    def alerts(self, namespace: str, **terms: Any) -> list[dict[str, Any]]:
        """The alerts in `logs-cloud_defend.alerts-default` from pods of `namespace` whose
        fields equal `terms` (dotted names: `process__executable` → process.executable)."""
        must = [{"term": {"orchestrator.namespace": namespace}}]
        must += [{"term": {k.replace("__", "."): v}} for k, v in terms.items()]
        self.es.indices.refresh(index=ALERTS, ignore_unavailable=True)
        hits = self.es.search(
            index=ALERTS, query={"bool": {"filter": must}}, size=10_000, sort=["@timestamp"],
            ignore_unavailable=True,
        )["hits"]["hits"]  # fmt: skip
        return [h["_source"] | {"_id": h["_id"]} for h in hits]


def run(pod: Pod, argv: Sequence[str]) -> int:
    """argv run to the end in the pod's container, as its entrypoint would be (its own
    session, no terminal); the exit status (-9: killed)."""
    try:
        proc = pod.run("app", list(argv), start_new_session=True, stdin=subprocess.DEVNULL)
    except PermissionError:  # lsm, fmodret: the exec itself refused
        return 126
    return proc.returncode


def default_policy(name: str) -> dict[str, Any]:
    """The seed's default policy as the chart installs it: a ClusterContainerPolicy."""
    spec = yaml.safe_load((REPO / "examples" / "policies" / "default.yaml").read_text())
    return {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ClusterContainerPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture(scope="session")
def stack(
    services_env: dict[str, str],
    kubeconfig: str,
    kubectl: Kubectl,
    k8s_api: client.ApiClient,
    es: Elasticsearch,
    operator: Operator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    t0 = time.monotonic()
    run_id = f"e2e-{os.urandom(3).hex()}"
    core = client.CoreV1Api(k8s_api)
    kubelet = Kubelet(core, run_id)
    directory = tmp_path_factory.mktemp("sensor")
    sensor = SensorProcess(kubelet.node, operator.namespace, kubeconfig, directory)
    made = Stack(
        services_env, kubectl, core, client.CustomObjectsApi(k8s_api), es, operator, kubelet,
        sensor, run_id, f"{run_id}-default",
    )  # fmt: skip
    default = default_policy(made.default_policy)
    with ExitStack() as cleanup:
        kubelet.register()
        cleanup.callback(kubelet.close)
        made.apply(default)
        cleanup.callback(
            kubectl, "delete", "clustercontainerpolicy", default["metadata"]["name"],
            "--ignore-not-found",
        )  # fmt: skip
        made.start_sensor()
        cleanup.callback(lambda: sensor.proc is not None and sensor.stop())
        log.info(
            f"stack up in {time.monotonic() - t0:.1f} s: node {kubelet.node}, operator in "
            f"{operator.namespace}, sensor in {made.mode()} mode, its log and state in {directory}"
        )
        yield made


@pytest.fixture
def namespaces(stack: Stack, k8s_api: client.ApiClient) -> Iterator[Callable[..., str]]:
    with ExitStack() as cleanup:

        def make(short: str, labels: Mapping[str, str] | None = None) -> str:
            name = f"{stack.run_id}-{short}-{os.urandom(2).hex()}"
            cleanup.enter_context(fresh_namespace(stack.kubectl, k8s_api, name))
            cleanup.callback(_delete_pods, stack.kubelet, name)  # before the namespace goes
            if labels:
                stack.core.patch_namespace(name, {"metadata": {"labels": dict(labels)}})
            return name

        yield make


def _delete_pods(kubelet: Kubelet, namespace: str) -> None:
    for pod in [p for p in kubelet.pods if p.namespace == namespace]:
        pod.delete()


@pytest.fixture
def story() -> Story:
    return Story()


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    """A binary of the test's own (a copy of `true`), so that a policy touches nothing else."""
    path = tmp_path / "bin" / "stk-tool"
    path.parent.mkdir()
    path.write_bytes(Path("/bin/true").read_bytes())
    path.chmod(0o755)
    return path
