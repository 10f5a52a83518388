"""The kubelet stand-in against the real apiserver and this machine's cgroup v2 hierarchy:
what it leaves behind must be what a kubelet and its runtime leave, since the sensor's
tests trust it."""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from stockade.local.kubelet import CGROUP2, Kubelet, Pod
from tests.node.conftest import MakeKubelet

pytestmark = pytest.mark.integration

HEX64 = re.compile(r"[0-9a-f]{64}")


def cgroup_v2_of(pid: int) -> str:
    """The `0::` line of /proc/PID/cgroup: the process's cgroup v2 path."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(line.removeprefix("0::") for line in lines if line.startswith("0::"))


def v1_groups(pid: int) -> list[str]:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return [line for line in lines if not line.startswith("0::")]


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def pod_json(core: client.CoreV1Api, pod: Pod) -> Any:
    return core.api_client.sanitize_for_serialization(
        core.read_namespaced_pod(pod.name, pod.namespace)
    )


def node_json(core: client.CoreV1Api, kubelet: Kubelet) -> Any:
    return core.api_client.sanitize_for_serialization(core.read_node(kubelet.node))


def test_a_started_pod_is_bound_running_and_its_process_runs_in_its_container(
    core: client.CoreV1Api, kubelet: Kubelet, namespace: str
) -> None:
    pod = kubelet.start_pod(namespace, "web-1", {"app": "web"})

    body = pod_json(core, pod)
    assert body["metadata"]["uid"] == pod.uid
    assert body["spec"]["nodeName"] == kubelet.node
    status = body["status"]
    assert status["phase"] == "Running"
    assert status["qosClass"] == "BestEffort"
    assert status["podIP"] == pod.ip
    assert status["hostIP"] == kubelet.ip
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "PodScheduled": "True", "PodReadyToStartContainers": "True", "Initialized": "True",
        "Ready": "True", "ContainersReady": "True",
    }  # fmt: skip
    [app] = status["containerStatuses"]
    container = pod.containers["app"]
    assert HEX64.fullmatch(container.id)
    assert app["name"] == "app"
    assert app["containerID"] == f"containerd://{container.id}"
    assert app["image"] == "docker.io/library/busybox:1.36"
    assert re.fullmatch(r"docker\.io/library/busybox@sha256:[0-9a-f]{64}", app["imageID"])
    assert app["ready"] is True and app["started"] is True
    assert app["state"]["running"]["startedAt"]

    pod_cgroup = (
        f"/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{pod.uid.replace('-', '_')}.slice"
    )
    expected = f"{pod_cgroup}/cri-containerd-{container.id}.scope"
    assert container.cgroup == CGROUP2 / expected.lstrip("/")
    assert container.cgroup.is_dir()
    assert kubelet.cgroup_id(pod, "app") == os.stat(CGROUP2 / expected.lstrip("/")).st_ino
    # the sandbox's cgroup is there too, beside the containers', as the runtime makes it
    sandboxes = [p.name for p in pod.cgroup.iterdir() if p.is_dir() and p != container.cgroup]
    assert sandboxes == [f"cri-containerd-{pod.sandbox.id}.scope"]

    sleeper = pod.popen("app", ["sleep", "30"])
    assert cgroup_v2_of(sleeper.pid) == expected
    assert v1_groups(sleeper.pid) == v1_groups(os.getpid())  # the v1 groups stay as they are
    ran = pod.run("app", ["cat", "/proc/self/cgroup"])
    assert f"0::{expected}\n" in ran.stdout

    node = node_json(core, kubelet)["status"]
    assert [c["status"] for c in node["conditions"] if c["type"] == "Ready"] == ["True"]
    assert node["nodeInfo"]["kernelVersion"] == platform.release()
    assert node["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_a_start_interrupted_leaves_no_cgroup(
    kubelet: Kubelet, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the status is written (`stockade demo` before it records the cgroup for
    `down`): the pod's cgroups and the Pod are gone, not left in the shared hierarchy."""
    made: list[Path] = []

    def interrupted(pod: Pod) -> None:
        made.append(pod.cgroup)
        raise KeyboardInterrupt

    monkeypatch.setattr(Pod, "write_status", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kubelet.start_pod(namespace, "cut", {"app": "web"})
    assert made and not made[0].exists() and kubelet.pods == []
    with pytest.raises(client.ApiException, match="Not Found"):
        kubelet.core.read_namespaced_pod("cut", namespace)


def test_status_can_name_the_containers_after_their_cgroups_exist(
    core: client.CoreV1Api, kubelet: Kubelet, namespace: str
) -> None:
    pod = kubelet.start_pod(namespace, "early", {"app": "web"}, status=False)
    container = pod.containers["app"]
    assert container.cgroup.is_dir()
    status = pod_json(core, pod)["status"]
    assert status["phase"] == "Pending"  # as the kubelet wrote it on taking the pod on
    [waiting] = status["containerStatuses"]
    assert waiting["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert "containerID" not in waiting and waiting["image"] == "docker.io/library/busybox:1.36"
    assert pod.run("app", ["true"]).returncode == 0

    pod.write_status()
    status = pod_json(core, pod)["status"]
    assert status["phase"] == "Running"
    assert [s["containerID"] for s in status["containerStatuses"]] == [
        f"containerd://{container.id}"
    ]
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert [(c["status"], c.get("reason")) for c in ready] == [("True", None)]


SLICE = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice"
CGROUPFS = "kubepods/besteffort/pod{uid}"
NGINX = "docker.io/library/nginx:1.27"
EXPECTED_NAMES = [  # driver, runtime, pod cgroup, container's, its monitor's, containerID, image
    ("systemd", "containerd", SLICE, "cri-containerd-{id}.scope", "", "containerd", NGINX),
    ("systemd", "cri-o", SLICE, "crio-{id}.scope", "crio-conmon-{id}.scope", "cri-o", NGINX),
    ("systemd", "docker", SLICE, "docker-{id}.scope", "", "docker", "nginx:1.27"),
    ("cgroupfs", "containerd", CGROUPFS, "{id}", "", "containerd", NGINX),
    ("cgroupfs", "cri-o", CGROUPFS, "crio-{id}", "crio-conmon-{id}", "cri-o", NGINX),
    ("cgroupfs", "docker", CGROUPFS, "{id}", "", "docker", "nginx:1.27"),
]


@pytest.mark.parametrize(
    ("driver", "runtime", "pod_path", "name", "monitor", "scheme", "image"),
    EXPECTED_NAMES,
    ids=[f"{driver}-{runtime}" for driver, runtime, *_ in EXPECTED_NAMES],
)
def test_cgroups_and_statuses_are_named_as_each_driver_and_runtime_name_them(
    core: client.CoreV1Api,
    kubelets: MakeKubelet,
    namespace: str,
    driver: str,
    runtime: str,
    pod_path: str,
    name: str,
    monitor: str,
    scheme: str,
    image: str,
) -> None:
    kubelet = kubelets(driver=driver, runtime=runtime)
    pod = kubelet.start_pod(namespace, "web", {"app": "web"}, [("nginx", "nginx:1.27")])
    container = pod.containers["nginx"]
    expected = pod_path.format(uid=pod.uid, uid_=pod.uid.replace("-", "_"))
    assert pod.cgroup == CGROUP2 / expected
    assert container.cgroup == pod.cgroup / name.format(id=container.id)
    # the sandbox's cgroup beside the container's, and with CRI-O each one's conmon's
    names = {name, monitor} - {""}
    made = {path.name for path in pod.cgroup.iterdir() if path.is_dir()}
    assert made == {n.format(id=c) for n in names for c in (container.id, pod.sandbox.id)}
    assert container.monitor == (pod.cgroup / monitor.format(id=container.id) if monitor else None)

    sleeper = pod.popen("nginx", ["sleep", "30"])
    assert cgroup_v2_of(sleeper.pid) == f"/{expected}/{container.cgroup.name}"
    [status] = pod_json(core, pod)["status"]["containerStatuses"]
    assert status["containerID"] == f"{scheme}://{container.id}"
    assert status["image"] == image
    node_info = node_json(core, kubelet)["status"]["nodeInfo"]
    assert node_info["containerRuntimeVersion"].startswith(f"{scheme}://")


@pytest.mark.parametrize(
    ("resources", "qos"),
    [
        ({}, "besteffort"),
        ({"requests": {"cpu": "10m"}}, "burstable"),
        ({"limits": {"cpu": "10m", "memory": "16Mi"}}, ""),  # requests default to limits
    ],
    ids=["BestEffort", "Burstable", "Guaranteed"],
)
def test_the_pod_cgroup_sits_under_its_qos_class(
    kubelets: MakeKubelet, namespace: str, resources: Any, qos: str
) -> None:
    systemd = kubelets(driver="systemd").start_pod(namespace, "s", {}, resources=resources)
    slice_ = f"kubepods-{qos}-pod" if qos else "kubepods-pod"
    expected = f"{slice_}{systemd.uid.replace('-', '_')}.slice"
    parent = CGROUP2 / "kubepods.slice" / (f"kubepods-{qos}.slice" if qos else "")
    assert systemd.cgroup == parent / expected

    cgroupfs = kubelets(driver="cgroupfs").start_pod(namespace, "c", {}, resources=resources)
    assert cgroupfs.cgroup == CGROUP2 / "kubepods" / qos / f"pod{cgroupfs.uid}"
    for pod in (systemd, cgroupfs):
        assert pod.containers["app"].cgroup.parent == pod.cgroup


def test_relabel_and_delete_act_on_the_apiserver_and_the_node(
    core: client.CoreV1Api, kubelet: Kubelet, namespace: str
) -> None:
    pod = kubelet.start_pod(namespace, "web", {"app": "web", "tier": "front"})
    pod.relabel({"app": "db"})
    assert pod_json(core, pod)["metadata"]["labels"] == {"app": "db"}

    sleeper = pod.popen("app", ["sleep", "30"])
    shell = pod.popen("app", ["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE)
    assert shell.stdout is not None
    background = int(shell.stdout.readline())  # not ours: only the container knows it
    decoy = pod.cgroup / "cri-containerd-not-a-container.scope" / "nested"
    decoy.mkdir(parents=True)  # what a test may add; it goes with the pod's cgroup
    cgroups = [pod.cgroup, pod.sandbox.cgroup, pod.containers["app"].cgroup, decoy.parent]
    pod.delete()
    assert sleeper.returncode == -signal.SIGKILL
    assert not alive(background)
    assert not [c for c in cgroups if c.exists()]
    with pytest.raises(client.ApiException) as gone:
        core.read_namespaced_pod("web", namespace)
    assert gone.value.status == 404
    assert pod not in kubelet.pods


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_close_leaves_no_process_cgroup_pod_or_node(
    core: client.CoreV1Api, kubelets: MakeKubelet, namespace: str, driver: str
) -> None:
    root = Path(tempfile.mkdtemp(prefix="stk-node-", dir=CGROUP2))  # its own: others' pods
    try:  # can't keep the node-level cgroups alive
        kubelet = kubelets(driver=driver, root=root)
        pods = [kubelet.start_pod(namespace, f"p{i}", {"i": str(i)}) for i in range(2)]
        sleepers = [pod.popen("app", ["sleep", "30"]) for pod in pods]
        assert [p.name for p in root.iterdir() if p.is_dir()]

        kubelet.close()
        assert [s.poll() for s in sleepers] == [-signal.SIGKILL] * 2
        assert [p for p in root.iterdir() if p.is_dir()] == []
        assert core.list_namespaced_pod(namespace).items == []
        with pytest.raises(client.ApiException) as gone:
            core.read_node(kubelet.node)
        assert gone.value.status == 404
        kubelet.close()  # twice is harmless (the fixture closes it again)
    finally:
        for path in sorted(root.rglob("*"), reverse=True):
            if path.is_dir():
                path.rmdir()
        root.rmdir()
