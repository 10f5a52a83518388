"""A stand-in for a node's kubelet and container runtime, acting only where a sensor sees them.

No kubelet or container runtime runs on a development or test machine, so this does what
they would leave behind for a sensor, and nothing else (`stockade up` registers this host's
Node with it, `stockade demo` starts its container with it, the node tests use it): the Node
object (as the kubelet registers it), Pods bound to it (as the scheduler's binding leaves
them), the pod and container cgroups named as the kubelet's cgroup driver and the runtime
name them, the pod status with `containerStatuses` as the kubelet writes it, and real
processes that join a container's cgroup before they exec. Only the cgroup v2 hierarchy is
touched (the machine's v1 groups belong to its supervisor); with no controllers enabled
there, the directories are plain groups, which is all a sensor reads.

    kubelet = Kubelet(core, "node-1")
    kubelet.register()
    web = kubelet.start_pod("shop", "web-1", {"app": "web"})
    web.run("app", ["/bin/true"])          # exec'd inside web-1's "app" container cgroup
    kubelet.close()                        # processes, cgroups, pods and the Node gone
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import platform
import subprocess
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

__all__ = ["CGROUP2", "DRIVERS", "RUNTIMES", "Container", "Kubelet", "Pod", "Runtime"]

# The cgroup v2 hierarchy: at `unified` beside the v1 controllers (hybrid), else the root.
CGROUP2 = Path("/sys/fs/cgroup/unified")
if not (CGROUP2 / "cgroup.procs").exists():
    CGROUP2 = Path("/sys/fs/cgroup")

BUSYBOX = "docker.io/library/busybox:1.36"
PAUSE = "registry.k8s.io/pause:3.9"


@dataclass(frozen=True)
class Runtime:
    """How a container runtime names a container's cgroup and reports it in the pod status."""

    cgroups: Mapping[str, str]  # cgroup driver → the container cgroup's name; {id} is its id
    version: str  # the Node's nodeInfo.containerRuntimeVersion
    monitors: Mapping[str, str] = field(default_factory=dict)  # ... of its monitor's cgroup
    short_images: bool = False  # status.image in the familiar form (Docker), not qualified

    @property
    def scheme(self) -> str:
        """The prefix of a containerID: `containerd`, `cri-o`, `docker`."""
        return self.version.partition("://")[0]


RUNTIMES = {
    "containerd": Runtime(
        {"systemd": "cri-containerd-{id}.scope", "cgroupfs": "{id}"}, "containerd://2.1.4"
    ),
    # CRI-O's default conmon_cgroup "pod" puts each container's conmon in the pod's cgroup.
    "cri-o": Runtime(
        {"systemd": "crio-{id}.scope", "cgroupfs": "crio-{id}"},
        "cri-o://1.34.1",
        monitors={"systemd": "crio-conmon-{id}.scope", "cgroupfs": "crio-conmon-{id}"},
    ),
    "docker": Runtime(
        {"systemd": "docker-{id}.scope", "cgroupfs": "{id}"}, "docker://28.3.3", short_images=True
    ),
}
DRIVERS = ("systemd", "cgroupfs")
NODE_CONDITIONS = (  # as a healthy kubelet posts them
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "is posting ready status"),
)


def now() -> str:
    """RFC 3339 to the second, as the apiserver stores times."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def qualified(image: str) -> str:
    """`busybox` → `docker.io/library/busybox:latest`, as containerd and CRI-O report it."""
    first, _, rest = image.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        image = f"docker.io/{image if rest else 'library/' + image}"
    if "@" not in image and ":" not in image.rpartition("/")[2]:
        image += ":latest"
    return image


def familiar(image: str) -> str:
    """`docker.io/library/busybox:1.36` → `busybox:1.36`, as Docker reports it."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if image.startswith(prefix):
            return image.removeprefix(prefix)
    return image


@dataclass
class Container:
    """A container as its runtime made it: id, image as reported in the status, cgroup."""

    name: str
    id: str
    image: str
    image_id: str
    cgroup: Path
    started_at: str
    monitor: Path | None = None  # its monitor's cgroup (CRI-O's conmon), beside it


@dataclass(eq=False)
class Pod:
    """A Pod bound to its kubelet's node, with its cgroups and the processes started in them."""

    kubelet: Kubelet
    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    ip: str
    cgroup: Path  # the pod's cgroup (the kubelet's)
    sandbox: Container  # the pause container's cgroup (the runtime's; not in the status)
    containers: dict[str, Container] = field(default_factory=dict)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def write_status(self) -> None:
        """The status the kubelet writes once every container runs (a strategic merge patch
        on the status subresource, as the kubelet's status manager sends it)."""
        runtime = self.kubelet.runtime
        started = min(c.started_at for c in self.containers.values())
        conditions = [
            {
                "type": kind, "status": "True", "reason": None, "message": None,
                "lastProbeTime": None, "lastTransitionTime": started,
            }
            for kind in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
        ]  # fmt: skip
        statuses = [
            {
                "name": c.name,
                "state": {"running": {"startedAt": c.started_at}},
                "lastState": {},
                "ready": True,
                "restartCount": 0,
                "image": c.image,
                "imageID": c.image_id,
                "containerID": f"{runtime.scheme}://{c.id}",
                "started": True,
            }
            for c in self.containers.values()
        ]
        status = {
            "phase": "Running",
            "conditions": conditions,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "containerStatuses": statuses,
        }
        self.kubelet.core.patch_namespaced_pod_status(self.name, self.namespace, {"status": status})

    def _join(self, container: str) -> Callable[[], None]:
        procs = self.containers[container].cgroup / "cgroup.procs"

        def join() -> None:  # runs in the child between fork and exec
            procs.write_text(str(os.getpid()))

        return join

    def run(
        self, container: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run argv inside `container` to the end (output captured as text unless overridden)."""
        options: dict[str, Any] = {
            "capture_output": True, "text": True, "check": False, "timeout": 60, **kwargs
        }  # fmt: skip
        return subprocess.run(list(argv), preexec_fn=self._join(container), **options)

    def popen(self, container: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside `container`; it is killed with the container."""
        proc = subprocess.Popen(list(argv), preexec_fn=self._join(container), **kwargs)
        self.processes.append(proc)
        return proc

    def relabel(self, labels: Mapping[str, str]) -> None:
        """Replace the pod's labels (a merge patch: labels not in `labels` are removed)."""
        patch: dict[str, str | None] = {key: None for key in self.labels if key not in labels}
        patch.update(labels)
        self.kubelet.core.patch_namespaced_pod(
            self.name, self.namespace, {"metadata": {"labels": patch}}
        )
        self.labels = dict(labels)

    def delete(self) -> None:
        """As a deletion goes on a node: the Pod marked deleted, its containers killed, its
        cgroups removed (deepest first), then the Pod deleted for good. Twice is harmless."""
        core = self.kubelet.core
        try:
            core.delete_namespaced_pod(self.name, self.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        kill(self.cgroup)  # every container's processes
        for proc in self.processes:  # and any that left their container's cgroup
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        remove(self.cgroup)
        try:
            core.delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=0)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        if self in self.kubelet.pods:
            self.kubelet.pods.remove(self)


class Kubelet:
    """One node's kubelet and container runtime (see the module's docstring)."""

    def __init__(
        self,
        core: client.CoreV1Api,
        node: str,
        root: Path = CGROUP2,
        driver: str = "systemd",
        runtime: str = "containerd",
    ) -> None:
        if driver not in DRIVERS:
            raise ValueError(f"cgroup driver {driver!r}: expected one of {', '.join(DRIVERS)}")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
        self.core = core
        self.node = node
        self.root = root
        self.driver = driver
        self.runtime = RUNTIMES[runtime]
        self.pods: list[Pod] = []
        self.registered = False
        # Addresses: only ever written into objects, never used on the network.
        subnet = zlib.crc32(node.encode()) % 250 + 1
        self.ip = f"10.0.0.{subnet}"
        self.pod_cidr = f"10.244.{subnet}.0/24"
        self._pod_ips = itertools.cycle(f"10.244.{subnet}.{host}" for host in range(2, 255))

    def register(self) -> str:
        """Create the Node as a kubelet registers it, with the status it posts; its uid."""
        version = client.VersionApi(self.core.api_client).get_code().git_version
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        labels = {
            "kubernetes.io/hostname": self.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
        }
        node = self.core.create_node(
            client.V1Node(
                metadata=client.V1ObjectMeta(name=self.node, labels=labels),
                spec=client.V1NodeSpec(pod_cidr=self.pod_cidr, pod_cidrs=[self.pod_cidr]),
            )
        )
        self.registered = True
        at = now()
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": memory(), "pods": "110"}
        conditions = [
            {
                "type": kind, "status": status, "reason": reason,
                "message": f"kubelet {message}", "lastHeartbeatTime": at, "lastTransitionTime": at,
            }
            for kind, status, reason, message in NODE_CONDITIONS
        ]  # fmt: skip
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": self.ip},
                {"type": "Hostname", "address": self.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": read_id("/etc/machine-id"),
                "systemUUID": str(uuid.uuid4()),
                "bootID": read_id("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": platform.release(),
                "osImage": os_image(),
                "containerRuntimeVersion": self.runtime.version,
                "kubeletVersion": version,
                "operatingSystem": "linux",
                "architecture": arch,
            },
        }
        self.core.patch_node_status(self.node, {"status": status})
        assert node.metadata is not None and node.metadata.uid is not None
        return node.metadata.uid

    def pod_cgroup(self, uid: str, qos: str) -> Path:
        """The pod's cgroup as the kubelet's driver names it (`qos` as in status.qosClass)."""
        if self.driver == "systemd":
            top = self.root / "kubepods.slice"
            if qos == "Guaranteed":
                return top / f"kubepods-pod{uid.replace('-', '_')}.slice"
            level = f"kubepods-{qos.lower()}"
            return top / f"{level}.slice" / f"{level}-pod{uid.replace('-', '_')}.slice"
        top = self.root / "kubepods"
        if qos == "Guaranteed":
            return top / f"pod{uid}"
        return top / qos.lower() / f"pod{uid}"

    def start_pod(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str],
        containers: Sequence[tuple[str, str]] = (("app", BUSYBOX),),
        *,
        status: bool = True,
        resources: Mapping[str, Mapping[str, str]] | None = None,
        bound: Callable[[], None] | None = None,
    ) -> Pod:
        """A pod started on this node, in the order it happens there: the Pod created and
        bound, the kubelet's Pending status, the pod cgroup, the sandbox's and then each
        container's cgroup, and (if `status`) the Running status naming the containers.
        `containers` are (name, image); `resources` (requests and limits, for every
        container) decide the QoS class and so where the pod cgroup goes; `bound` is called
        between the Pending status and the first cgroup (what else happens on the node
        meanwhile)."""
        specs = [
            client.V1Container(
                name=c, image=image, resources=client.V1ResourceRequirements(**(resources or {}))
            )
            for c, image in containers
        ]
        created = self.core.create_namespaced_pod(
            namespace,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels)),
                spec=client.V1PodSpec(containers=specs),
            ),
        )
        assert created.metadata is not None and created.metadata.uid is not None
        assert created.status is not None and created.status.qos_class is not None
        uid = created.metadata.uid
        qos = created.status.qos_class  # set by the apiserver, read by the kubelet
        binding = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=self.node),
        )
        # The client can't decode what the binding returns (a Status, not a Binding).
        self.core.create_namespaced_pod_binding(name, namespace, binding, _preload_content=False)
        self._write_pending_status(namespace, name, containers)
        if bound is not None:
            bound()
        cgroup = self.pod_cgroup(uid, qos)
        pod = Pod(
            kubelet=self,
            namespace=namespace,
            name=name,
            uid=uid,
            labels=dict(labels),
            ip=next(self._pod_ips),
            cgroup=cgroup,
            sandbox=self._create_container(cgroup, "POD", PAUSE),
        )
        self.pods.append(pod)
        try:
            for container, image in containers:
                pod.containers[container] = self._create_container(cgroup, container, image)
            if status:
                pod.write_status()
        except BaseException:  # Ctrl-C, an apiserver error: no cgroups left that no one knows
            pod.delete()
            raise
        return pod

    def _write_pending_status(
        self, namespace: str, name: str, containers: Sequence[tuple[str, str]]
    ) -> None:
        """The kubelet's first status, written as it takes the pod on: Pending, the
        containers named with their spec's image but no containerID yet."""
        at = now()
        waiting = f"containers with unready status: [{' '.join(c for c, _ in containers)}]"
        unready = {"status": "False", "reason": "ContainersNotReady", "message": waiting}
        conditions: list[dict[str, Any]] = [
            {"type": "PodReadyToStartContainers", "status": "False"},
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", **unready},
            {"type": "ContainersReady", **unready},
        ]
        for condition in conditions:
            condition |= {"lastProbeTime": None, "lastTransitionTime": at}
        statuses = [
            {
                "name": container, "state": {"waiting": {"reason": "ContainerCreating"}},
                "lastState": {}, "ready": False, "restartCount": 0, "image": image,
                "imageID": "", "started": False,
            }
            for container, image in containers
        ]  # fmt: skip
        status = {
            "phase": "Pending",
            "conditions": conditions,
            "hostIP": self.ip,
            "hostIPs": [{"ip": self.ip}],
            "startTime": at,
            "containerStatuses": statuses,
        }
        self.core.patch_namespaced_pod_status(name, namespace, {"status": status})

    def _create_container(self, pod_cgroup: Path, name: str, image: str) -> Container:
        """The runtime's part: a new container id, its monitor's cgroup if the runtime has
        one, and its own cgroup (with the pod's, if new)."""
        cid = os.urandom(32).hex()
        monitor = self.runtime.monitors.get(self.driver)
        monitor_cgroup = None if monitor is None else pod_cgroup / monitor.format(id=cid)
        if monitor_cgroup is not None:
            mkdirs(monitor_cgroup)
        cgroup = pod_cgroup / self.runtime.cgroups[self.driver].format(id=cid)
        mkdirs(cgroup)
        full = qualified(image)
        repository = full.partition("@")[0]
        if ":" in repository.rpartition("/")[2]:
            repository = repository.rpartition(":")[0]
        image_id = f"{repository}@sha256:{hashlib.sha256(full.encode()).hexdigest()}"
        if self.runtime.short_images:  # as cri-dockerd reports them
            full, image_id = familiar(full), f"docker-pullable://{familiar(image_id)}"
        return Container(name, cid, full, image_id, cgroup, now(), monitor_cgroup)

    def cgroup_id(self, pod: Pod, container: str) -> int:
        """The container cgroup's id: its directory's inode, what the kernel reads."""
        return os.stat(pod.containers[container].cgroup).st_ino

    def close(self) -> None:
        """Every pod deleted (processes, cgroups, Pod), the node-level cgroups removed where
        no other pods are left in them, and the Node deleted."""
        for pod in list(self.pods):
            pod.delete()
        top = self.root / ("kubepods.slice" if self.driver == "systemd" else "kubepods")
        qos_levels = ("burstable", "besteffort")
        if self.driver == "systemd":
            shared = [top / f"kubepods-{level}.slice" for level in qos_levels]
        else:
            shared = [top / level for level in qos_levels]
        for path in [*shared, top]:
            prune(path)
        if self.registered:
            try:
                self.core.delete_node(self.node)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
            self.registered = False


def mkdirs(path: Path) -> None:
    """mkdir `path` and its missing parents; a parent another kubelet removes meanwhile
    (its last pod gone) is made again."""
    for _ in range(10):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    raise RuntimeError(f"could not create cgroup {path}")


def kill(cgroup: Path) -> None:
    """SIGKILL everything in the cgroup and below and wait until it is empty, as a runtime
    stops a container; gone already is fine."""
    try:
        (cgroup / "cgroup.kill").write_text("1")
    except FileNotFoundError:
        return
    deadline = time.monotonic() + 10
    while "populated 1" in (cgroup / "cgroup.events").read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{cgroup} still has processes 10 s after cgroup.kill")
        time.sleep(0.01)


def remove(cgroup: Path) -> None:
    """rmdir an emptied cgroup and those below it, deepest first; gone already is fine."""
    try:
        below = [path for path in cgroup.iterdir() if path.is_dir()]
    except FileNotFoundError:
        return
    for path in below:
        remove(path)
    for _ in range(100):
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:  # EBUSY for a moment after its last process exits
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    raise RuntimeError(f"could not remove cgroup {cgroup}: busy")


def prune(cgroup: Path) -> None:
    """rmdir a node-level cgroup if no pods are left in it (other kubelets' may be)."""
    try:
        cgroup.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
            raise


def read_id(path: str) -> str:
    """The machine's own id from `path`, as cAdvisor reads it for the kubelet."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return str(uuid.uuid4())


def os_image() -> str:
    """PRETTY_NAME from os-release, as the kubelet reports the node's OS."""
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            return value.strip('"')
    return "Linux"


def memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{line.split()[1]}Ki"
    return "0"
