"""The local stack: the services, the CRDs, this host's Node, the operator and its sensor.

`Stack.up()` starts what isn't running, in the order a cluster comes up: etcd,
kube-apiserver and Elasticsearch (`services/up`, which honours the `STOCKADE_*` ports and
state directory), the CRDs, the Node as this host's kubelet would register it, the
operator, the sensor for the Node, and the seed's default policy as a
ClusterContainerPolicy; it returns once the policy is Ready on the node and the sensor has
reported. `Stack.down()` stops and removes all of it (`services/down` removes the state
directory). Both are safe to repeat; an interrupted `up` leaves pid files that `down`
follows.

    stack = Stack.from_env()
    stack.up(print)          # progress lines to `print`
    stack.kubectl("get", "cpol", "-A")
    stack.down(print)

The operator and the sensor are the real commands (`stockade operator`, `stockade
sensor`), started in their own sessions with their pid files and logs under
`$STOCKADE_STATE/local`, so they outlive `stockade up` and a Ctrl-C of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config

from stockade.local import StackError
from stockade.local.kubelet import Kubelet
from stockade.operator.metrics import scrape
from stockade.policy.resources import GROUP, VERSION

__all__ = ["REPO", "Stack"]

REPO = Path(__file__).resolve().parents[2]  # the clone `stockade` is installed from
NAMESPACE = "stockade-system"  # the operator's bundles and Lease, as the chart installs it
CLUSTER = "local"
DEFAULT_POLICY = "default"  # the ClusterContainerPolicy made of examples/policies/default.yaml
HEARTBEAT_S = 2  # the sensor's report, so counts show within seconds
Progress = Callable[[str], None]
PORTS = ("ETCD", "ETCD_PEER", "APISERVER", "ES", "ES_TRANSPORT", "OPERATOR", "SENSOR")
NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _quiet(line: str) -> None:
    pass


def wait(what: str, probe: Callable[[], Any], timeout: float, check: Callable[[], None]) -> Any:
    """Poll `probe` until truthy; `check` raises when a piece it waits on has died."""
    deadline = time.monotonic() + timeout
    while True:
        check()
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not after {timeout:g} s")
        time.sleep(0.2)


def start_time(pid: int) -> int:
    """When `pid` started (clock ticks since boot, /proc/PID/stat field 22)."""
    stat_line = Path(f"/proc/{pid}/stat").read_text()
    return int(stat_line.rpartition(")")[2].split()[19])


def check_owned(state: Path) -> None:
    """Refuse a state directory another user could change: root would write, chown and
    remove through their symlinks and run what they put there (the default is in /tmp).
    Every existing component, as named and as resolved, must be root's or ours, and none
    writable by others but a sticky parent such as /tmp."""
    me = os.geteuid()
    resolved = state.resolve()
    for path in dict.fromkeys([state, *state.parents, resolved, *resolved.parents]):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if info.st_uid not in (0, me):
            raise StackError(f"STOCKADE_STATE={state}: {path} is owned by uid {info.st_uid}")
        shared = info.st_mode & 0o022 and not stat.S_ISLNK(info.st_mode)
        if shared and (path in (state, resolved) or not info.st_mode & stat.S_ISVTX):
            raise StackError(f"STOCKADE_STATE={state}: {path} is writable by other users")


@dataclass(frozen=True)
class Process:
    """A background `stockade` command with its pid file and log."""

    name: str  # "operator", "sensor"
    directory: Path

    @property
    def pidfile(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid if it runs and is this command: the pid file names the pid and its start
        time, so a recycled pid (even another stack's `stockade sensor`) is not."""
        try:
            pid, started = (int(field) for field in self.pidfile.read_text().split())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if start_time(pid) != started:
                return None
        except (OSError, ValueError):
            return None
        return pid if self.name.encode() in argv[:4] else None

    def start(self, argv: list[str], env: Mapping[str, str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,  # Ctrl-C of `up` leaves it running
            )
        self.pidfile.write_text(f"{proc.pid} {start_time(proc.pid)}")
        deadline = time.monotonic() + 10  # until the child has exec'd: `pid` knows it then
        while self.pid() is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def check(self) -> None:
        if self.pid() is None:
            tail = (
                self.log.read_text(errors="replace").splitlines()[-5:] if self.log.exists() else []
            )
            raise StackError(f"the {self.name} exited (log {self.log}):\n  " + "\n  ".join(tail))

    def stop(self) -> bool:
        """SIGTERM, then SIGKILL after 30 s; whether it was running."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.pid() is not None:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # exited meanwhile
            pass
        self.pidfile.unlink(missing_ok=True)
        return True


@dataclass(frozen=True)
class Stack:
    """One local stack, named by its state directory and ports (the `STOCKADE_*` env)."""

    state: Path
    node: str
    operator_port: int
    sensor_port: int
    environ: Mapping[str, str]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Stack:
        env = dict(os.environ if environ is None else environ)
        node = socket.gethostname().lower()
        if not NODE_NAME.match(node) or len(node) > 253:
            raise StackError(f"the host name {node!r} is not a Kubernetes node name")
        for name in PORTS:  # services/up's too: it would write any text into its configs
            value = env.get(f"STOCKADE_{name}_PORT")
            if value and not (  # empty: the default, as services/up reads it
                value.isascii() and value.isdigit() and 0 < int(value) < 65536
            ):
                raise StackError(f"STOCKADE_{name}_PORT={value!r}: not a port (1-65535)")
        ports = [
            int(env.get(f"STOCKADE_{p}_PORT") or d)
            for p, d in (("OPERATOR", 19090), ("SENSOR", 19464))
        ]
        state = Path(env.get("STOCKADE_STATE") or "/tmp/stockade-services")  # as services/up
        if not state.is_absolute():
            raise StackError(f"STOCKADE_STATE={state}: not an absolute path")
        check_owned(state)
        return cls(state, node, ports[0], ports[1], env)

    # --- where things are -------------------------------------------------------------

    @property
    def local(self) -> Path:
        """What `up` adds to the services' state directory."""
        return self.state / "local"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def operator(self) -> Process:
        return Process("operator", self.local)

    @property
    def sensor(self) -> Process:
        return Process("sensor", self.local)

    def services_env(self) -> dict[str, str]:
        """The `export`s services/up wrote ({} before it ran)."""
        try:
            text = (self.state / "env").read_text()
        except FileNotFoundError:
            return {}
        exports = {}
        for line in text.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            exports[key] = value
        return exports

    def env(self) -> dict[str, str]:
        """The environment kubectl, the operator and the sensor run with."""
        return {**self.environ, **self.services_env()}

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The services' kubectl with this stack's kubeconfig, output captured."""
        env = self.env()
        kubectl = Path(env.get("STOCKADE_BIN", "/var/cache/stockade/bin")) / "kubectl"
        proc = subprocess.run(
            [str(kubectl), *args], env=env, capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise StackError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    @contextmanager
    def api(self) -> Iterator[client.ApiClient]:
        """A client of the stack's apiserver; its failures are one line (StackError)."""
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        try:
            yield api
        except client.ApiException as exc:
            raise StackError(f"the apiserver answered {exc.status} {exc.reason}") from None
        except urllib3.exceptions.HTTPError as exc:  # not answering: refused, timed out
            reason = getattr(exc, "reason", None) or exc
            raise StackError(f"the apiserver ({self.kubeconfig}): {reason}") from None
        finally:
            api.close()  # type: ignore[no-untyped-call]

    # --- up -------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One `up`, `down` or `demo` at a time on this state directory (if it exists): two
        `up`s would each start an operator, the second's pid file orphaning the first."""
        try:
            fd = os.open(self.state / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except FileNotFoundError:  # no stack here
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StackError(
                f"another `stockade up`, `down` or `demo` is running on {self.state}"
            ) from None
        try:
            yield
        finally:
            os.close(fd)

    def up(self, progress: Progress = _quiet) -> None:
        """Start what isn't running; return once the default policy is Ready on the node."""
        t0 = time.monotonic()
        self.state.mkdir(mode=0o755, parents=True, exist_ok=True)
        check_owned(self.state)  # again: another user may have made it since `from_env`
        with self.exclusive():
            self._services(progress)
            # root's alone: the demo's root (its /tmp is 1777) must not be reachable by others
            self.local.mkdir(mode=0o700, exist_ok=True)
            self.local.chmod(0o700)
            env = self.env()
            self._crds(progress)
            with self.api() as api:
                self._node(api, progress)
                self._operator(env, progress)
                self._sensor(env, progress)
                self._default_policy(progress)
                self._wait_reported(api, progress)
        progress(f"up in {time.monotonic() - t0:.0f} s")

    def _services(self, progress: Progress) -> None:
        script = REPO / "services" / "up"
        if not script.exists():
            raise StackError(
                f"{script}: not found; stockade up runs from a clone of the repository"
            )
        progress("services: etcd, kube-apiserver, Elasticsearch (Elasticsearch takes 15-30 s)")
        # its own session, so a Ctrl-C of `up` lets it finish: what it started is recorded
        proc = subprocess.Popen(
            [str(script)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(self.environ),
            start_new_session=True,
        )
        assert proc.stderr is not None
        lines = []
        try:
            for line in proc.stderr:
                lines.append(line.rstrip())
                progress("  " + line.rstrip().removeprefix("[services] "))
        except KeyboardInterrupt:
            progress("interrupted: letting services/up finish, so `stockade down` can stop it")
            proc.wait()
            raise
        if proc.wait() != 0:
            raise StackError("services/up failed:\n  " + "\n  ".join(lines[-5:]))

    def _crds(self, progress: Progress) -> None:
        files = [a for f in sorted((REPO / "crds").glob("*.yaml")) for a in ("-f", str(f))]
        self.kubectl("apply", "--server-side", "--force-conflicts", *files)
        for attempt in range(3):  # a CRD just applied may have no conditions yet
            if (
                self.kubectl(
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    *files,
                    check=attempt == 2,
                ).returncode
                == 0
            ):
                break
            time.sleep(1)
        progress(f"CRDs: {len(files) // 2} installed")

    def _node(self, api: client.ApiClient, progress: Progress) -> None:
        core = client.CoreV1Api(api)
        try:
            core.read_node(self.node)
            progress(f"node {self.node}: registered")
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            Kubelet(core, self.node).register()
            progress(f"node {self.node}: registered now, as its kubelet would")
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    def _operator(self, env: Mapping[str, str], progress: Progress) -> None:
        op = self.operator
        if (pid := op.pid()) is not None:
            progress(f"operator: running (pid {pid})")
            return
        op.start(
            [
                self._stockade(),
                "operator",
                "--namespace",
                NAMESPACE,
                "--standalone",
                "--cluster",
                CLUSTER,
                "--metrics-port",
                str(self.operator_port),
            ],
            env,
        )
        synced = lambda: scrape(self.operator_port, 1).get("stockade_operator_synced") == 1.0  # noqa: E731
        wait("the operator's first full reconcile", synced, 60, op.check)
        progress(f"operator: started (pid {op.pid()}, log {op.log})")

    def _sensor(self, env: Mapping[str, str], progress: Progress) -> None:
        sensor = self.sensor
        if (pid := sensor.pid()) is not None:
            progress(f"sensor: running (pid {pid})")
            return
        sensor.start(
            [
                self._stockade(),
                "sensor",
                "--node-name",
                self.node,
                "--namespace",
                NAMESPACE,
                "--state-dir",
                str(self.local / "sensor-state"),
                "--output",
                "elasticsearch",
                "--metrics-port",
                str(self.sensor_port),
                "--heartbeat",
                str(HEARTBEAT_S),
            ],
            env,
        )
        ready = lambda: scrape(self.sensor_port, 1).get("stockade_sensor_ready") == 1.0  # noqa: E731
        wait("the sensor's first bundle in force", ready, 60, sensor.check)
        progress(
            f"sensor: started for node {self.node}, mode {self.sensor_mode()}"
            f" (pid {sensor.pid()}, log {sensor.log})"
        )

    def sensor_mode(self) -> str:
        """The mode the sensor probed (its first log line says it)."""
        for line in self.sensor.log.read_text(errors="replace").splitlines():
            try:
                mode = json.loads(line).get("mode")
            except ValueError:
                continue
            if mode:
                return str(mode)
        return "unknown"

    def _default_policy(self, progress: Progress) -> None:
        spec = yaml.safe_load((REPO / "examples" / "policies" / "default.yaml").read_text())
        manifest = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ClusterContainerPolicy",
            "metadata": {"name": DEFAULT_POLICY},
            "spec": spec,
        }
        self.apply(manifest)
        self.kubectl("wait", "--for=condition=Ready", "--timeout=60s", f"ccpol/{DEFAULT_POLICY}")
        progress(
            f"policy clustercontainerpolicy/{DEFAULT_POLICY}"
            " (examples/policies/default.yaml): Ready"
        )

    def apply(self, manifest: Mapping[str, Any]) -> None:
        """`kubectl apply --server-side` of one object (unchanged: no new generation)."""
        env = self.env()
        kubectl = Path(env.get("STOCKADE_BIN", "/var/cache/stockade/bin")) / "kubectl"
        proc = subprocess.run(
            [str(kubectl), "apply", "--server-side", "-f", "-"],
            input=json.dumps(manifest),
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise StackError(f"kubectl apply: {proc.stderr.strip()}")

    def _wait_reported(self, api: client.ApiClient, progress: Progress) -> None:
        custom = client.CustomObjectsApi(api)

        def reported() -> bool:
            try:
                custom.get_cluster_custom_object(GROUP, VERSION, "nodepolicyreports", self.node)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
                return False
            return True

        wait(f"the sensor's NodePolicyReport {self.node}", reported, 30, self.sensor.check)
        progress(f"sensor: reporting (kubectl get nodepolicyreport {self.node})")

    @staticmethod
    def _stockade() -> str:
        return shutil.which("stockade", path=str(Path(sys.executable).parent)) or "stockade"

    # --- down -----------------------------------------------------------------------------

    def down(self, progress: Progress = _quiet) -> None:
        """Stop and remove everything `up` and `demo` made; nothing there is fine."""
        from stockade.local.demo import remove_demo

        marks = [self.state / "lock", self.state / "pki" / "ca.crt"]  # `up`'s, services/up's
        if self.state.exists() and not any(mark.exists() for mark in marks):
            raise StackError(
                f"STOCKADE_STATE={self.state}: no stack was started there"
                " (no lock or pki/ca.crt); not removing it"
            )
        with self.exclusive():
            remove_demo(self, progress)
            for proc in (self.sensor, self.operator):
                if proc.stop():
                    progress(f"{proc.name}: stopped")
            script = REPO / "services" / "down"
            out = subprocess.run(
                [str(script)], env=dict(self.environ), capture_output=True, text=True, check=False
            )
        for line in out.stderr.splitlines():
            progress("  " + line.removeprefix("[services] "))
        if out.returncode != 0:
            raise StackError("services/down failed")
