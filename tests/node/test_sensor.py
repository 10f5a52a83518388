"""The sensor on Kubernetes: the operator's bundle enforced for the node's real containers.

Real apiserver, real operator, the sensor as a process in `kill` mode on the real kernel,
real processes in cgroups named as containerd names them. The tests stand in for the
kubelet (`kubelet.Kubelet`) and nowhere else.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import shutil
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from stockade.local.kubelet import Kubelet, Pod
from stockade.operator.bundles import configmap_name
from stockade.policy.bundle import HASH_ANNOTATION, configmap_payload
from stockade.policy.compiler import compile_bundle
from stockade.policy.loader import iter_policies
from stockade.sensor.serve import CLIENT_TIMEOUT_S
from tests.node.sensor import SensorProcess
from tests.operator.conftest import Kubectl, Operator, free_port, wait_for

pytestmark = pytest.mark.kernel

KILLED = -9


def block_exec(name: str, namespace: str, labels: dict[str, str], tool: Path, **spec: Any) -> str:
    """A ContainerPolicy that blocks (kills, here) the exec of `tool` in matching pods."""
    return json.dumps(
        {
            "apiVersion": "stockade.dev/v1alpha1",
            "kind": "ContainerPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "podSelector": {"matchLabels": labels},
                "process": {
                    "selectors": [
                        {"name": "tool", "operation": ["exec"], "processExecutable": [str(tool)]}
                    ],
                    "responses": [
                        {"match": ["tool"], "actions": spec.pop("actions", ["alert", "block"])}
                    ],
                },
                **spec,
            },
        }
    )


def row(kubectl: Kubectl, namespace: str, name: str) -> dict[str, str]:
    """The policy's `kubectl get containerpolicies` row, by column."""
    out = kubectl("get", "containerpolicies", "-n", namespace, name).stdout
    header, values = (line.split() for line in out.strip().splitlines())
    return dict(zip(header, values, strict=True))


def policy_status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj: Any = custom.get_namespaced_custom_object(
        "stockade.dev", "v1alpha1", namespace, "containerpolicies", name
    )
    status: dict[str, Any] = obj.get("status") or {}
    return status


def ready_reason(status: dict[str, Any]) -> str | None:
    cond = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
    return f"{cond['status']}/{cond['reason']}" if cond else None


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    """A binary of its own (a copy of `true`), so that the policy touches nothing else."""
    path = tmp_path / "bin" / "stk-tool"
    path.parent.mkdir()
    shutil.copy("/bin/true", path)
    return path


@pytest.fixture
def web_and_db(kubelet: Kubelet, namespace: str) -> Iterator[tuple[Pod, Pod]]:
    web = kubelet.start_pod(namespace, "web-1", {"app": "web"})
    db = kubelet.start_pod(namespace, "db-1", {"app": "db"})
    yield web, db


def test_a_policy_applied_with_kubectl_blocks_in_web_pods_only(
    node_sensor: SensorProcess,
    kubelet: Kubelet,
    web_and_db: tuple[Pod, Pod],
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
    custom: client.CustomObjectsApi,
) -> None:
    web, db = web_and_db
    node_sensor.start()
    assert web.run("app", [str(tool)]).returncode == 0  # no policy yet
    t0 = time.monotonic()
    kubectl("apply", "-f", "-", input=block_exec("no-tool", namespace, {"app": "web"}, tool))
    wait_for("the exec killed in the web pod", lambda: web.run("app", [str(tool)]).returncode
             == KILLED, timeout=20)  # fmt: skip
    print(f"kubectl apply → first enforced operation: {time.monotonic() - t0:.2f} s")
    assert db.run("app", [str(tool)]).returncode == 0
    wait_for(
        "READY True, nodes 1/1, BLOCKED 1",
        lambda: (r := row(kubectl, namespace, "no-tool"))["READY"] == "True"
        and r["NODES"] == "1/1" and r["BLOCKED"] == "1" and r,
        timeout=20,
    )  # fmt: skip
    docs = [d for d in node_sensor.documents() if d["process"].get("executable") == str(tool)]
    blocked = [d for d in docs if d["cloud_defend"]["outcome"] == "killed"]
    assert len(blocked) == 1
    doc = blocked[0]
    assert doc["orchestrator"]["namespace"] == namespace
    assert doc["orchestrator"]["resource"]["name"] == "web-1"
    assert "app:web" in doc["orchestrator"]["resource"]["label"]
    assert doc["container"]["image"]["name"] == "busybox"
    assert doc["container"]["id"] == web.containers["app"].id
    assert doc["cloud_defend"]["matched_selectors"] == ["tool"]
    status = policy_status(custom, namespace, "no-tool")
    assert status["nodes"]["modes"] == {"kill": 1}


def test_edit_delete_and_relabel_take_effect_on_the_next_operation(
    node_sensor: SensorProcess,
    kubelet: Kubelet,
    web_and_db: tuple[Pod, Pod],
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
) -> None:
    web, _ = web_and_db
    node_sensor.start()
    kubectl("apply", "-f", "-", input=block_exec("edit-me", namespace, {"app": "web"}, tool))
    wait_for("blocked", lambda: web.run("app", [str(tool)]).returncode == KILLED)
    node_sensor.documents()
    kubectl(
        "apply", "-f", "-",
        input=block_exec("edit-me", namespace, {"app": "web"}, tool, actions=["log"]),
    )  # fmt: skip
    wait_for("block → log", lambda: web.run("app", [str(tool)]).returncode == 0)
    logged = [d for d in node_sensor.documents() if d["process"].get("executable") == str(tool)]
    assert logged and logged[-1]["cloud_defend"]["actions"] == ["log"]
    assert logged[-1]["cloud_defend"]["outcome"] == "allowed"

    kubectl("apply", "-f", "-", input=block_exec("edit-me", namespace, {"app": "web"}, tool))
    wait_for("log → block", lambda: web.run("app", [str(tool)]).returncode == KILLED)
    web.relabel({"app": "db"})
    wait_for("relabelled out of scope", lambda: web.run("app", [str(tool)]).returncode == 0)
    web.relabel({"app": "web"})
    wait_for("relabelled into scope", lambda: web.run("app", [str(tool)]).returncode == KILLED)
    kubectl("delete", "containerpolicy", "-n", namespace, "edit-me")
    wait_for("deleted", lambda: web.run("app", [str(tool)]).returncode == 0)
    node_sensor.documents()
    assert web.run("app", [str(tool)]).returncode == 0
    assert not [d for d in node_sensor.documents() if d["process"].get("executable") == str(tool)]

    # a pod that goes away leaves the kernel's map: its pod, sandbox and container cgroups
    known = node_sensor.metrics()["stockade_sensor_containers"]
    web_and_db[1].delete()
    wait_for("3 cgroups fewer", lambda: node_sensor.metrics()["stockade_sensor_containers"]
             == known - 3)  # fmt: skip


def test_pod_level_predicates_hold_before_the_status_names_the_container(
    node_sensor: SensorProcess,
    kubelet: Kubelet,
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
) -> None:
    node_sensor.start()
    kubectl("apply", "-f", "-", input=block_exec("early", namespace, {"app": "web"}, tool))
    # the policy in force on the node: a pod of it is there (the operator targets nodes by pods)
    first = kubelet.start_pod(namespace, "web-0", {"app": "web"})
    wait_for("in force", lambda: first.run("app", [str(tool)]).returncode == KILLED)
    pod = kubelet.start_pod(namespace, "web-early", {"app": "web"}, status=False)
    # the cgroup exists, the status doesn't name the container: its first exec is decided
    assert pod.run("app", [str(tool)]).returncode == KILLED
    docs = [d for d in node_sensor.documents() if d["process"].get("executable") == str(tool)]
    early = [d for d in docs if d["orchestrator"]["resource"]["name"] == "web-early"]
    assert early and "image" not in early[-1].get("container", {})
    pod.write_status()
    wait_for(
        "the image known",
        lambda: pod.run("app", [str(tool)]).returncode == KILLED
        and any(
            d.get("container", {}).get("image", {}).get("name") == "busybox"
            for d in node_sensor.documents()
            if d["orchestrator"]["resource"]["name"] == "web-early"
        ),
    )  # fmt: skip


def test_a_known_pods_first_exec_is_decided_by_the_kernel_alone(
    node_sensor: SensorProcess,
    kubelet: Kubelet,
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
) -> None:
    """A pod known to the sensor before its cgroups are made: the kernel lists the pod's
    cgroup in its mkdir, so the first exec in its container is decided even with the
    sensor's user space stopped (SIGSTOP) from before the mkdir to after the exec, 20 times;
    once it runs again, those execs' documents name their pods."""
    node_sensor.start()
    kubectl("apply", "-f", "-", input=block_exec("frozen", namespace, {"app": "web"}, tool))
    first = kubelet.start_pod(namespace, "web-0", {"app": "web"})
    wait_for("in force", lambda: first.run("app", [str(tool)]).returncode == KILLED)
    proc = node_sensor.proc
    assert proc is not None

    def freeze() -> None:  # the pod bound: its watch event reaches the sensor in a few ms
        time.sleep(0.5)
        proc.send_signal(signal.SIGSTOP)

    first_execs = []
    for i in range(20):
        try:
            pod = kubelet.start_pod(
                namespace, f"frozen-{i}", {"app": "web"}, status=False, bound=freeze
            )
            first_execs.append(pod.run("app", [str(tool)]).returncode)
        finally:
            proc.send_signal(signal.SIGCONT)
    assert first_execs == [KILLED] * 20
    named = {
        d["orchestrator"]["resource"]["name"]
        for d in node_sensor.documents()
        if d["process"].get("executable") == str(tool)
    }
    assert {f"frozen-{i}" for i in range(20)} <= named


def test_restart_without_the_apiserver_enforces_the_cached_bundle(
    node_sensor: SensorProcess,
    kubelet: Kubelet,
    web_and_db: tuple[Pod, Pod],
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
    custom: client.CustomObjectsApi,
    tmp_path: Path,
) -> None:
    web, _ = web_and_db
    node_sensor.start()
    kubectl("apply", "-f", "-", input=block_exec("sticky", namespace, {"app": "web"}, tool))
    wait_for("blocked", lambda: web.run("app", [str(tool)]).returncode == KILLED)
    wait_for("counted", lambda: policy_status(custom, namespace, "sticky").get("counts", {})
             .get("blocked") == 1)  # fmt: skip
    assert node_sensor.stop() == 0

    # the apiserver as the sensor sees it when it is down: nothing answers
    away = tmp_path / "away.kubeconfig"
    config = json.loads(kubectl("config", "view", "--raw", "-o", "json").stdout)
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = "https://127.0.0.1:9"
    away.write_text(json.dumps(config))
    node_sensor.start(kubeconfig=str(away))
    assert web.run("app", [str(tool)]).returncode == KILLED  # from the cache, at once
    assert node_sensor.stop() == 0

    # a crash leaves nothing pinned or attached that stops the next start
    node_sensor.start(kubeconfig=str(away))
    node_sensor.crash()
    assert web.run("app", [str(tool)]).returncode == 0  # nothing of it left in the kernel
    node_sensor.start()  # back: catches up without applying the same bundle again
    assert web.run("app", [str(tool)]).returncode == KILLED
    wait_for("counts that add up (1 + 1 + 1)", lambda: policy_status(custom, namespace, "sticky")
             .get("counts", {}).get("blocked") == 3, timeout=20)  # fmt: skip
    messages = [line["message"] for line in node_sensor.log_lines()]
    started = max(i for i, m in enumerate(messages) if m.startswith("mode "))
    applied = [m for m in messages[started:] if "applied generation" in m]
    assert len(applied) == 1 and "from the cache" in applied[0], applied
    assert any("is the one in force" in m for m in messages[started:])


RESTARTS = 8


def test_every_exec_after_readyz_is_killed_across_restarts(
    node_sensor: SensorProcess,
    web_and_db: tuple[Pod, Pod],
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
    tmp_path: Path,
) -> None:
    """/readyz 200 means enforcing for the node's containers, from that moment on: a process
    in the container execs the blocked tool every few ms while the sensor restarts (with the
    apiserver answering), and every exec that starts after /readyz said 200 is killed —
    also while the watches' first answers come in (the cluster's id and name before the
    pods once unlisted the cached containers for a few ms)."""
    web, _ = web_and_db
    node_sensor.start()
    kubectl("apply", "-f", "-", input=block_exec("no-tool", namespace, {"app": "web"}, tool))
    wait_for("blocked", lambda: web.run("app", [str(tool)]).returncode == KILLED)
    statuses = tmp_path / "statuses"  # "<when the exec started> <its exit status>" per line
    loop = f'while :; do t=$(date +%s.%N); {tool}; echo "$t $?" >> {statuses}; sleep 0.002; done'
    execs = web.popen("app", ["sh", "-c", loop], start_new_session=True)
    ran = []
    try:
        for _ in range(RESTARTS):
            assert node_sensor.stop() == 0
            node_sensor.start(ready=False)
            while not node_sensor.ready():  # the moment /readyz turns 200, closer than wait_for
                time.sleep(0.005)
            ready_at = time.time()
            time.sleep(1.5)  # the watches' first answers, the first rescan

            def after(since: float = ready_at) -> list[int]:
                lines = [line.split() for line in statuses.read_text().splitlines()]
                return [int(status) for when, status in lines if float(when) > since]

            # the loop ran all along: 50 execs since, however slow a loaded machine makes it
            wait_for("50 execs after /readyz", lambda: len(after()) > 50, timeout=30)
            ran.append(sum(status != 128 + 9 for status in after()))
    finally:
        execs.kill()
        execs.wait()
    assert ran == [0] * RESTARTS, f"execs not killed after /readyz, per restart: {ran}"


def test_an_output_that_cant_be_written_loses_documents_not_enforcement(
    node_sensor: SensorProcess,
    web_and_db: tuple[Pod, Pod],
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
) -> None:
    web, _ = web_and_db
    node_sensor.start("--output", "jsonl:/dev/full")  # a full disk: every write fails
    kubectl("apply", "-f", "-", input=block_exec("no-tool", namespace, {"app": "web"}, tool))
    wait_for("blocked", lambda: web.run("app", [str(tool)]).returncode == KILLED)
    wait_for("the lost document counted", lambda: node_sensor.running() and node_sensor.metrics()
             .get('stockade_sensor_dropped_total{reason="output_lost"}', 0) >= 1)  # fmt: skip
    for _ in range(3):
        assert web.run("app", [str(tool)]).returncode == KILLED
        time.sleep(0.2)  # its record written (and failed) before the next exec
    assert node_sensor.running()
    assert node_sensor.stop() == 0


def test_the_elasticsearch_outputs_complaints_are_json_log_lines(
    node_sensor: SensorProcess,
    web_and_db: tuple[Pod, Pod],
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
) -> None:
    """The log is JSON lines (docs/sensor.md), also what the output says about an
    Elasticsearch it can't reach (`log_lines` fails on any other line)."""
    web, _ = web_and_db
    node_sensor.start("--output", f"elasticsearch:http://127.0.0.1:{free_port()}")  # nobody
    kubectl("apply", "-f", "-", input=block_exec("no-tool", namespace, {"app": "web"}, tool))
    wait_for("blocked", lambda: web.run("app", [str(tool)]).returncode == KILLED)
    said = wait_for("the output's complaint in the log", lambda: [
        line for line in node_sensor.log_lines()
        if line["message"].startswith("elasticsearch: can't connect")])  # fmt: skip
    assert said[0]["level"] == "warning" and said[0]["logger"] == "stockade.sensor", said
    assert "spooling to" in said[0]["message"]
    assert node_sensor.stop() == 0
    node_sensor.log_lines()  # the last ones too


def test_idle_connections_to_the_metrics_port_are_closed(node_sensor: SensorProcess) -> None:
    # the port listens on every address: a client that connects and sends nothing must not
    # keep one of the sensor's threads (and a file descriptor) for ever
    node_sensor.start()
    assert node_sensor.proc is not None
    status = Path(f"/proc/{node_sensor.proc.pid}/status")

    def threads() -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith("Threads:"))
        return int(line.split()[1])

    before = threads()
    idle = [socket.create_connection(("127.0.0.1", node_sensor.port)) for _ in range(50)]
    try:
        assert node_sensor.ready()  # answered meanwhile
        for conn in idle:  # (a connection beyond the listen backlog is accepted late)
            conn.settimeout(CLIENT_TIMEOUT_S + 10)
            assert conn.recv(1) == b""  # closed by the sensor
        wait_for("the threads given back", lambda: threads() < before + 5)
    finally:
        for conn in idle:
            conn.close()


def test_a_silent_sensor_makes_its_policies_not_ready_and_back(
    node_sensor: SensorProcess,
    kubelet: Kubelet,
    web_and_db: tuple[Pod, Pod],
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
    custom: client.CustomObjectsApi,
    kubeconfig: str,
    tmp_path: Path,
) -> None:
    # an operator of its own that calls a sensor silent after 4 s (the session's: 60 s)
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log")
    op.start("--standalone", "--sensor-silent-after", "4")
    try:
        node_sensor.start()
        kubectl("apply", "-f", "-", input=block_exec("watched", namespace, {"app": "web"}, tool))
        wait_for("Ready", lambda: ready_reason(policy_status(custom, namespace, "watched"))
                 == "True/Applied", timeout=20)  # fmt: skip
        node_sensor.stop()
        t0 = time.monotonic()
        wait_for("SensorSilent", lambda: ready_reason(policy_status(custom, namespace, "watched"))
                 == "False/SensorSilent", timeout=15)  # fmt: skip
        print(f"sensor stopped → SensorSilent in {time.monotonic() - t0:.1f} s")
        node_sensor.start()
        wait_for("Ready again", lambda: ready_reason(policy_status(custom, namespace, "watched"))
                 == "True/Applied", timeout=20)  # fmt: skip
    finally:
        op.stop()


def test_counts_left_for_a_restart_are_carried_only_within_bounds(
    node_sensor: SensorProcess,
    kubelet: Kubelet,
    web_and_db: tuple[Pod, Pod],
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
    custom: client.CustomObjectsApi,
) -> None:
    web, _ = web_and_db
    node_sensor.start()
    kubectl("apply", "-f", "-", input=block_exec("carried", namespace, {"app": "web"}, tool))
    wait_for("blocked", lambda: web.run("app", [str(tool)]).returncode == KILLED)
    wait_for("counted", lambda: policy_status(custom, namespace, "carried").get("counts", {})
             .get("blocked") == 1)  # fmt: skip
    first = node_report(custom, kubelet.node)["sensor"]["instanceId"]
    policy: Any = custom.get_namespaced_custom_object(
        "stockade.dev", "v1alpha1", namespace, "containerpolicies", "carried"
    )
    meta = policy["metadata"]
    assert node_sensor.stop() == 0
    # a damaged (or forged) unreported.json: a count no report can carry
    unreported = node_sensor.state / "unreported.json"
    unreported.write_text(json.dumps([[meta["uid"], meta["generation"], 2**64, 0, 0]]))
    node_sensor.start()
    wait_for("the restarted sensor's report", lambda: node_report(custom, kubelet.node)
             .get("sensor", {}).get("instanceId") not in (None, first), timeout=20)  # fmt: skip
    assert policy_status(custom, namespace, "carried")["counts"]["blocked"] == 1
    assert any("unreported" in line["message"] for line in node_sensor.log_lines())


def _bundle_configmap(node: str, namespace: str, policy_yaml: str, tmp: Path) -> dict[str, Any]:
    """The node's bundle ConfigMap as the operator would write it, for `policy_yaml`."""
    source = tmp / "policy.yaml"
    source.write_text(policy_yaml)
    bundle = compile_bundle(iter_policies([source]), node=None)
    data, binary = configmap_payload(bundle)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(node),
            "namespace": namespace,
            "annotations": {HASH_ANNOTATION: bundle.hash},
        },
        "data": data,
        "binaryData": binary,
    }


def node_report(custom: client.CustomObjectsApi, node: str) -> dict[str, Any]:
    try:
        report: Any = custom.get_cluster_custom_object(
            "stockade.dev", "v1alpha1", "nodepolicyreports", node
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    return dict(report)


def test_hostile_bundles_pods_and_cgroups_leave_the_bundle_in_force(
    kubelet: Kubelet,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    kubeconfig: str,
    namespace: str,
    tool: Path,
    tmp_path: Path,
) -> None:
    """The node's bundle written here, not by an operator, so that it can be made hostile."""
    sensor = SensorProcess(kubelet.node, namespace, kubeconfig, tmp_path)
    labels = {"app": "web", **{f"l{i}.example.com/k{i}": "v" * 63 for i in range(199)}}
    long_name = "w" * 253
    web = kubelet.start_pod(namespace, long_name, labels)
    good = _bundle_configmap(
        kubelet.node, namespace, block_exec("no-tool", namespace, {"app": "web"}, tool), tmp_path
    )
    core.create_namespaced_config_map(namespace, good)  # type: ignore[arg-type]
    cm = configmap_name(kubelet.node)
    sensor.start()
    try:
        wait_for("blocked", lambda: web.run("app", [str(tool)]).returncode == KILLED)
        doc = [d for d in sensor.documents() if d["cloud_defend"]["outcome"] == "killed"][-1]
        assert doc["orchestrator"]["resource"]["name"] == long_name
        assert len(doc["orchestrator"]["resource"]["label"]) == 200

        bomb = base64.b64encode(gzip.compress(bytes(70 * 1024 * 1024), 9)).decode()
        hostile: list[tuple[dict[str, Any], str]] = [
            ({"data": {"bundle.json": "{not json"}}, "not a bundle"),
            ({"metadata": {"annotations": {HASH_ANNOTATION: "sha256:" + "0" * 64}}}, "match"),
            ({"data": None, "binaryData": {"bundle.json.gz": bomb}}, "unpacks to more than"),
        ]
        for refused, (patch, why) in enumerate(hostile, start=1):
            core.patch_namespaced_config_map(cm, namespace, patch)

            def counted(n: int = refused) -> bool:
                return sensor.metrics().get("stockade_sensor_bundles_refused_total") == n

            def reported(why: str = why) -> bool:
                errors = node_report(custom, kubelet.node).get("errors", [])
                return any(why in e["message"] for e in errors)

            wait_for(f"refused: {why}", counted)
            assert web.run("app", [str(tool)]).returncode == KILLED  # the bundle in force stays
            wait_for("the refusal in the node's report", reported)
            core.replace_namespaced_config_map(cm, namespace, good)  # type: ignore[arg-type]
            wait_for(
                "the report's errors cleared",
                lambda: sensor.metrics() and not node_report(custom, kubelet.node).get("errors"),
            )
        errors = [
            line for line in sensor.log_lines()
            if line["level"] == "error" and "refused: bundle ConfigMap" in line["message"]
        ]  # fmt: skip
        assert len(errors) == 3 and all("\n" not in e["message"] for e in errors)
        assert "unpacks to more than" in errors[-1]["message"]

        # directories that look like a pod's or a container's, and aren't
        uid = web.uid.replace("-", "_")
        fakes = [
            kubelet.root / "kubepods.slice" / f"kubepods-pod{uid}x.slice",
            kubelet.root / f"kubepods-besteffort-pod{uid}.slice",
            web.cgroup / ("cri-containerd-" + "z" * 64 + ".scope"),
            web.cgroup / ("cri-containerd-" + "a" * 64 + ".scope") / "nested" / "deeper",
        ]
        known = sensor.metrics()["stockade_sensor_containers"]
        for fake in fakes:
            fake.mkdir(parents=True)
        try:
            time.sleep(0.5)
            assert sensor.metrics()["stockade_sensor_containers"] == known + 1  # the a*64 one
            assert web.run("app", [str(tool)]).returncode == KILLED
        finally:
            for fake in reversed(fakes):
                for d in [fake, *fake.parents]:
                    if d == web.cgroup or d == kubelet.root:
                        break
                    with contextlib.suppress(OSError):
                        d.rmdir()
        assert sensor.running()
        health = urllib.request.urlopen(f"http://127.0.0.1:{sensor.port}/healthz", timeout=5)
        assert health.status == 200
    finally:
        sensor.stop()


def test_a_burst_of_50_pod_starts_is_decided_from_each_first_exec(
    node_sensor: SensorProcess,
    kubelet: Kubelet,
    kubectl: Kubectl,
    namespace: str,
    tool: Path,
) -> None:
    """Pod-level predicates from each container's first exec; image predicates once the
    status names the container: the window, measured."""
    imaged = tool.with_name("stk-imaged")
    shutil.copy(tool, imaged)
    policy = json.loads(block_exec("burst", namespace, {"app": "web"}, tool))
    process = policy["spec"]["process"]
    process["selectors"].append(
        {"name": "imaged", "operation": ["exec"], "processExecutable": [str(imaged)],
         "containerImageName": ["busybox"]}
    )  # fmt: skip
    process["responses"][0]["match"].append("imaged")
    node_sensor.start()
    kubectl("apply", "-f", "-", input=json.dumps(policy))
    first = kubelet.start_pod(namespace, "web-0", {"app": "web"})
    wait_for("in force", lambda: first.run("app", [str(tool)]).returncode == KILLED)

    t0 = time.monotonic()
    pods = [kubelet.start_pod(namespace, f"burst-{i}", {"app": "web"}, status=False)
            for i in range(50)]  # fmt: skip
    started = time.monotonic() - t0
    first_execs = [pod.run("app", [str(tool)]).returncode for pod in pods]
    assert first_execs == [KILLED] * 50
    assert [pod.run("app", [str(imaged)]).returncode for pod in pods] == [0] * 50  # no image yet

    named: dict[str, float] = {}
    for pod in pods:
        pod.write_status()
        named[pod.name] = time.monotonic()
    window: dict[str, float] = {}
    deadline = time.monotonic() + 20
    while len(window) < len(pods) and time.monotonic() < deadline:
        for pod in pods:
            if pod.name not in window and pod.run("app", [str(imaged)]).returncode == KILLED:
                window[pod.name] = time.monotonic() - named[pod.name]
    assert len(window) == len(pods), f"image never known in {len(pods) - len(window)} pods"
    spans = sorted(window.values())
    print(
        f"50 pods started in {started:.2f} s, each first exec decided by its pod's facts; "
        f"status written → image predicates hold: p50 {spans[24] * 1000:.0f} ms, "
        f"max {spans[-1] * 1000:.0f} ms (polled round-robin: a round is 50 execs)"
    )
