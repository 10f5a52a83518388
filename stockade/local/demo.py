"""`stockade demo`: a container as a kubelet would leave one on this node, and a short story.

The container is the kubelet stand-in's (`stockade.local.kubelet`): a Pod `demo/demo`
(label app=demo) bound to the stack's node, with its status as the kubelet writes it, and
the cgroups containerd makes under the systemd driver. Its processes are real: a main
process in its own mount namespace, chrooted into a small root filesystem (the host's
static busybox, linked under each applet's name), and every step of the story entered into
that namespace and root as `kubectl exec` enters a container (`nsenter --mount --root`), so
the paths the sensor records are the container's. It stays running after the story
(`kubectl get pod -n demo`); `stockade demo` again starts it anew, `stockade down` removes
it.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import pty
import shutil
import subprocess
import termios
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from stockade.local import StackError
from stockade.local.kubelet import BUSYBOX, CGROUP2, Kubelet, Pod, kill, prune, remove
from stockade.local.stack import Progress, Stack, wait
from stockade.policy.resources import GROUP, VERSION

__all__ = [
    "BLOCK_POLICY", "DEMO_NS", "RunningContainer", "build_rootfs", "remove_demo", "run_demo",
    "run_main", "start_container",
]  # fmt: skip

DEMO_NS = "demo"
BLOCK_POLICY = "no-binaries-from-tmp"
ALERTS = "logs-cloud_defend.alerts-default"
LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS = 0x00020000


def build_rootfs(root: Path) -> Path:
    """A minimal container root: busybox hard-linked as /bin/<applet> (so an exec's path is
    the applet's, not /bin/busybox's), /tmp, /etc/passwd, /proc."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise StackError(
            "the demo container's root is built from busybox: apt-get install busybox-static"
        )
    if root.exists():
        return root
    new = root.with_name(f"{root.name}.new")  # renamed into place whole: an interrupted
    shutil.rmtree(new, ignore_errors=True)  # build is built again, not reused half-made
    for directory in ("bin", "etc", "tmp", "proc", "root", "usr/local/bin"):
        (new / directory).mkdir(parents=True, exist_ok=True)
    (new / "tmp").chmod(0o1777)
    shutil.copy2(busybox, new / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox" and "/" not in applet:
            (new / "bin" / applet).hardlink_to(new / "bin" / "busybox")
    (new / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (new / "etc" / "group").write_text("root:x:0:\n")
    (new / "etc" / "hostname").write_text("demo\n")
    new.rename(root)
    return root


@dataclass
class RunningContainer:
    """A running container of the stand-in: its pod, its main process, its root."""

    pod: Pod
    name: str
    pid: int  # the main process: its mount namespace and root are the container's

    def exec(self, script: str, *, tty: bool = False, timeout: float = 30) -> tuple[int, str]:
        """`sh -c script` entered into the container as `kubectl exec` enters it: in its
        cgroup, mount namespace and root, in a session of its own (`tty`: with a
        pseudo-terminal as its controlling terminal, as `kubectl exec -it` gives it); the
        exit status and what it printed."""
        procs = self.pod.containers[self.name].cgroup / "cgroup.procs"
        target = self.pid
        master, slave = pty.openpty() if tty else (-1, -1)

        def enter() -> None:  # between fork and exec, as a runtime's exec does (nsenter's way)
            procs.write_text(str(os.getpid()))
            os.setsid()
            if tty:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            mnt = os.open(f"/proc/{target}/ns/mnt", os.O_RDONLY)
            root = os.open(f"/proc/{target}/root", os.O_RDONLY)
            if LIBC.setns(mnt, CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            os.fchdir(root)
            os.chroot(".")
            os.chdir("/")

        argv = ["/bin/sh", "-c", script]  # the container's /bin/sh, exec'd after `enter`
        if not tty:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, preexec_fn=enter,
            )  # fmt: skip
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            return proc.returncode, out.decode(errors="replace")
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=enter)
        os.close(slave)
        terminal = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last user is gone
                break
            if not chunk:
                break
            terminal += chunk
        os.close(master)
        try:
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        return code, terminal.decode(errors="replace").replace("\r\n", "\n")


def start_container(
    kubelet: Kubelet,
    rootfs: Path,
    namespace: str,
    name: str,
    labels: dict[str, str],
    container: str = "app",
) -> RunningContainer:
    """A pod with one container (see `run_main`)."""
    pod = kubelet.start_pod(namespace, name, labels, ((container, BUSYBOX),))
    return run_main(pod, container, rootfs)


def run_main(pod: Pod, container: str, rootfs: Path) -> RunningContainer:
    """The container's main process, `sleep infinity`: in its own session (so it outlives
    the caller) and its own mount namespace, chrooted into `rootfs`."""
    argv = ["unshare", "--mount", "--propagation", "private", "--", "chroot", str(rootfs)]
    main = pod.popen(
        container, [*argv, "/bin/sleep", "infinity"], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip

    def in_root() -> bool:  # unshare and chroot exec'd: the process is the container's sleep
        try:
            return os.readlink(f"/proc/{main.pid}/root") == str(rootfs)
        except OSError:
            return False

    wait("the container's main process", in_root, 10, lambda: None)
    return RunningContainer(pod, container, main.pid)


def _record(stack: Stack) -> Path:
    return stack.local / "demo.json"


def remove_demo(stack: Stack, progress: Progress) -> None:
    """Kill the demo container's processes and remove its cgroups (from its record; the
    Pod goes with the apiserver's state or is deleted by the next demo)."""
    record = _record(stack)
    try:
        cgroup = Path(json.loads(record.read_text())["cgroup"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    pods = CGROUP2 / "kubepods.slice"  # where the stand-in's pods are, and nothing else
    if ".." not in cgroup.parts and cgroup.is_relative_to(pods) and cgroup != pods:
        kill(cgroup)
        remove(cgroup)
        for parent in cgroup.parents:  # the QoS and kubepods slices, if no other pod is left
            if parent == CGROUP2:
                break
            prune(parent)
        progress(f"demo container: stopped, cgroup {cgroup} removed")
    else:
        progress(f"{record}: cgroup {cgroup} is not a pod's under {pods}: left alone")
    record.unlink()


def _forget_previous(stack: Stack, core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    """A previous demo's container, Pod and blocking policy gone, so the story starts anew."""
    remove_demo(stack, lambda _: None)
    deletions: list[Callable[[], object]] = [
        lambda: custom.delete_namespaced_custom_object(
            GROUP, VERSION, DEMO_NS, "containerpolicies", BLOCK_POLICY
        ),
        lambda: core.delete_namespaced_pod("demo", DEMO_NS, grace_period_seconds=0),
    ]
    for delete in deletions:
        try:
            delete()
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=DEMO_NS)))
    except client.ApiException as exc:
        if exc.status != 409:
            raise

    def pod_gone() -> bool:
        try:
            core.read_namespaced_pod("demo", DEMO_NS)
        except client.ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait("the previous demo pod's deletion", pod_gone, 30, lambda: None)


BLOCK_MANIFEST = f"""\
# Written by `stockade demo`: no program under /tmp may run in the demo namespace's
# app=demo pods. Every attempt is an alert, and the exec is blocked in the kernel.
apiVersion: {GROUP}/{VERSION}
kind: ContainerPolicy
metadata:
  name: {BLOCK_POLICY}
  namespace: {DEMO_NS}
spec:
  podSelector:
    matchLabels:
      app: demo
  process:
    selectors:
      - name: execFromTmp
        operation: [exec]
        processExecutable: [/tmp/**]
    responses:
      - match: [execFromTmp]
        actions: [alert, block]
"""


def alerts(stack: Stack, since: str) -> list[dict[str, Any]]:
    """The alerts in Elasticsearch for the demo namespace since `since`, oldest first."""
    url = stack.env()["ELASTICSEARCH_URL"]
    query = {
        "size": 50,
        "sort": [{"@timestamp": "asc"}],
        "query": {
            "bool": {
                "filter": [
                    {"term": {"orchestrator.namespace": DEMO_NS}},
                    {"range": {"@timestamp": {"gte": since}}},
                ]
            }
        },
    }
    request = urllib.request.Request(
        f"{url}/{ALERTS}/_search",
        json.dumps(query).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            hits = json.load(response)["hits"]["hits"]
    except OSError:
        return []
    return [hit["_source"] for hit in hits]


BLOCKED = ("denied", "killed")  # cloud_defend.outcome of a blocked operation, by mode


def _describe(alert: dict[str, Any]) -> str:
    """One alert as a line: time, action, path, outcome, the selectors that matched."""
    defend = alert.get("cloud_defend", {})
    path = alert.get("file", {}).get("path") or alert.get("process", {}).get("executable", "")
    when = str(alert.get("@timestamp", ""))[11:23]
    action = alert.get("event", {}).get("action", "")
    selectors = ",".join(defend.get("matched_selectors", []))
    return f"{when}  {action:<16} {path:<10} {defend.get('outcome', ''):<8} {selectors}"


def run_demo(stack: Stack, say: Progress) -> dict[str, Any]:
    """The story; returns what it saw (the blocked exec's status, the alerts, the counts)."""
    with stack.exclusive():
        return _story(stack, say)


def _story(stack: Stack, say: Progress) -> dict[str, Any]:
    if stack.sensor.pid() is None:
        raise StackError("the stack is not up: run `stockade up` first")
    rootfs = build_rootfs(stack.local / "demo-rootfs")
    since = datetime.now(UTC).isoformat()
    kubeconfig = f"KUBECONFIG={stack.kubeconfig}"
    with stack.api() as api:
        core = client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        _forget_previous(stack, core, custom)
        kubelet = Kubelet(core, stack.node)
        pod = kubelet.start_pod(DEMO_NS, "demo", {"app": "demo"}, (("app", BUSYBOX),))
        # recorded before anything runs in it: an interrupted demo leaves nothing `down` misses
        _record(stack).write_text(json.dumps({"cgroup": str(pod.cgroup)}))
        box = run_main(pod, "app", rootfs)
        say(
            f"A container, as a kubelet and containerd leave one: pod {DEMO_NS}/demo on node"
            f" {stack.node}, its processes in their own mount namespace on {rootfs},\n"
            f"  in cgroup {box.pod.containers[box.name].cgroup}"
        )
        say(f"  {kubeconfig} kubectl get pod -n {DEMO_NS} -o wide")
        for line in stack.kubectl("get", "pod", "-n", DEMO_NS, "-o", "wide").stdout.splitlines():
            say(f"    {line}")

        say("\n1. A shell in the container, on a terminal (as `kubectl exec -it demo -- sh`)")
        _, out = box.exec("id; ls /; exit 0", tty=True)
        _show(say, "$ id; ls /", out)
        say("   -> the default policy alerts: an interactive session (sessionLeaderInteractive)")

        say("\n2. A new binary: the container writes a program that was not in its image")
        _, out = box.exec("cp /bin/busybox /tmp/nc && /tmp/nc 2>&1 | head -1")
        _show(say, "$ cp /bin/busybox /tmp/nc && /tmp/nc", out)
        say("   -> drift: the default policy alerts on createExecutable (and lets it run)")

        say("\n3. Block it: a ContainerPolicy, applied with kubectl")
        manifest = stack.local / f"{BLOCK_POLICY}.yaml"
        manifest.write_text(BLOCK_MANIFEST)
        applied = stack.kubectl("apply", "-f", str(manifest))
        _show(say, f"$ {kubeconfig} kubectl apply -f {manifest}", applied.stdout)
        t0 = time.monotonic()
        stack.kubectl(
            "wait", "-n", DEMO_NS, "--for=condition=Ready", "--timeout=60s", f"cpol/{BLOCK_POLICY}"
        )
        say(
            f"   Ready on the node {time.monotonic() - t0:.2f} s later "
            f"(kubectl wait -n {DEMO_NS} --for=condition=Ready cpol/{BLOCK_POLICY})"
        )

        say("\n4. The same program again")
        _, blocked = box.exec('/tmp/nc; echo "exit status $?"')
        mode = stack.sensor_mode()
        _show(say, '$ /tmp/nc; echo "exit status $?"', blocked)
        how = (
            "killed before its first instruction (kill mode: exit 137)"
            if mode == "kill"
            else f"refused: EPERM ({mode} mode)"
        )
        say(f"   -> blocked: {how}")

        say(f"\n5. The alerts in Elasticsearch ({ALERTS})")
        seen = wait(
            "the block's alert in Elasticsearch",
            lambda: _blocked_alert(stack, since),
            30,
            stack.sensor.check,
        )
        say(
            f"   curl -s '{stack.env()['ELASTICSEARCH_URL']}/{ALERTS}/_search"
            f"?q=orchestrator.namespace:{DEMO_NS}'"
        )
        say(f"   {'time (UTC)':<13} {'action':<16} {'path':<10} {'outcome':<8} matched selectors")
        for alert in seen:
            say(f"   {_describe(alert)}")

        say("\n6. The counts, on the policies (the sensor reports every few seconds)")
        counts = wait(
            "BLOCKED 1 on the policy", lambda: _blocked_count(custom), 30, stack.sensor.check
        )
        for args in (
            ("get", "containerpolicies", "-n", DEMO_NS),
            ("get", "clustercontainerpolicies"),
        ):
            out = stack.kubectl(*args).stdout
            _show(say, f"$ {kubeconfig} kubectl {' '.join(args)}", out)
        say(
            f"\nThe container keeps running: {kubeconfig} kubectl get pod -n {DEMO_NS}; "
            "`stockade demo` again starts it anew; `stockade down` removes everything."
        )
        return {"alerts": seen, "blocked": counts, "mode": mode, "blocked_output": blocked}


def _show(say: Progress, command: str, output: str) -> None:
    say(f"   {command}")
    for line in output.rstrip().splitlines():
        say(f"     {line}")


def _blocked_alert(stack: Stack, since: str) -> list[dict[str, Any]] | None:
    found = alerts(stack, since)
    blocked = [a for a in found if a.get("cloud_defend", {}).get("outcome") in BLOCKED]
    return found if blocked else None


def _blocked_count(custom: client.CustomObjectsApi) -> int | None:
    policy: Any = custom.get_namespaced_custom_object(
        GROUP, VERSION, DEMO_NS, "containerpolicies", BLOCK_POLICY
    )
    blocked = policy.get("status", {}).get("counts", {}).get("blocked", 0)
    return int(blocked) if blocked else None
