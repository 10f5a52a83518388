"""Operator scale against the real apiserver (not a test).

    eval "$(services/up)"
    .venv/bin/python benchmarks/operator_scale.py [--nodes 1000] [--pods 30000] [--policies 500]
    .venv/bin/python benchmarks/operator_scale.py --quick   # 20 nodes, 200 pods, 10 policies

Creates (bulk, in parallel) Nodes, Pods bound with `spec.nodeName` across labelled
namespaces, and policies (ContainerPolicies with podSelectors; ClusterContainerPolicies
with namespaceSelectors, some with podSelectors too), then runs `stockade operator
--standalone` as a subprocess and measures:

1. cold start: operator start → every Node's ConfigMap holds exactly the expected policies;
2. policy edits (the widest cluster policy, a new generation each; `--edits`, one after
   another) → every affected bundle holds the new generation (target <= 5 s), and the
   bundle writes per second that makes, and the CPU the operator, the apiserver and etcd
   (found by `services/up`'s pid files) use in each edit;
3. a pod bound to a node whose bundle lacks its policy → that bundle holds it, p50/p99
   over `--samples` (target p99 <= 2 s);
4. the operator's peak RSS, VmHWM (target <= 500 MiB);
5. the largest bundle: canonical JSON bytes, and bytes as stored in the ConfigMap
   (target <= 256 KiB).

Bundles are followed with a watch on the operator's ConfigMaps (arrival times), and
checked once more with a list at the end of the cold start. Everything created is
deleted at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import urllib3
from _figures import Figure, add_arguments, figure, report
from kubernetes import client, config

from stockade.operator.metrics import scrape
from stockade.policy.bundle import BUNDLE_GZIP_KEY, BUNDLE_KEY

REPO = Path(__file__).resolve().parents[1]
STOCKADE = REPO / ".venv" / "bin" / "stockade"
KUBECTL = Path(os.environ.get("STOCKADE_BIN", "/var/cache/stockade/bin")) / "kubectl"
GROUP, VERSION = "stockade.dev", "v1alpha1"
BENCH = "stockade.dev/bench"
SELECTOR = "app.kubernetes.io/managed-by=stockade-operator,app.kubernetes.io/component=bundle"
TIERS = ("frontend", "backend", "data")
APPS = 20
MiB = 1024 * 1024
WRITES_METRIC = 'stockade_operator_bundle_writes_total{op="write"}'


def log(message: str) -> None:
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"[{time.strftime('%H:%M:%S')} load {load}] {message}", file=sys.stderr, flush=True)


# --- the workload -------------------------------------------------------------------


@dataclass
class Workload:
    run: str
    namespaces: dict[str, dict[str, str]]  # name → labels
    nodes: list[str]
    pods: list[tuple[str, str, str, int]]  # namespace, name, node, app
    cpols: list[tuple[str, int]]  # namespace, app  (name cp-app<app>)
    ccpols: list[tuple[str, str | None, int | None]]  # name, tier (None: env=prod), app
    expected: dict[str, set[str]] = field(default_factory=dict)  # node → labels


def workload(run: str, n_nodes: int, n_pods: int, n_policies: int, n_ns: int) -> Workload:
    rng = random.Random(1)
    namespaces = {
        f"sb-{run}-{i:02d}": {
            BENCH: run,
            "tier": TIERS[i % len(TIERS)],
            "env": "prod" if i % 2 == 0 else "staging",
        }
        for i in range(n_ns)
    }
    ns_names = list(namespaces)
    nodes = [f"sb-{run}-n{i:04d}" for i in range(n_nodes)]
    pods = [
        (ns_names[j % n_ns], f"p{j:05d}", nodes[rng.randrange(n_nodes)], (j // n_ns) % APPS)
        for j in range(n_pods)
    ]
    n_cluster = max(1, n_policies // 10)
    n_namespaced = min(n_policies - n_cluster, n_ns * APPS)
    cpols = [(ns_names[k % n_ns], (k // n_ns) % APPS) for k in range(n_namespaced)]
    ccpols: list[tuple[str, str | None, int | None]] = [
        (f"sb-{run}-cc{c:03d}", None, None)
        if c % 5 == 0
        else (f"sb-{run}-cc{c:03d}", TIERS[c % len(TIERS)], c % APPS)
        for c in range(n_cluster)
    ]
    w = Workload(run, namespaces, nodes, pods, cpols, ccpols)
    w.expected = {n: set() for n in nodes}
    by_ns_app: dict[tuple[str, int], list[str]] = {}
    for ns, a in cpols:
        by_ns_app.setdefault((ns, a), []).append(f"{ns}/cp-app{a}@1")
    for ns, _, node, app in pods:
        held = w.expected[node]
        held.update(by_ns_app.get((ns, app), ()))
        labels = namespaces[ns]
        for name, tier, capp in ccpols:
            if (tier is None and labels["env"] == "prod") or (
                tier == labels["tier"] and capp == app
            ):
                held.add(f"{name}@1")
    return w


def spec(k: int) -> dict[str, Any]:
    """A few process and file selectors, alert/log only (nothing the operator refuses)."""
    return {
        "process": {
            "selectors": [
                {"name": "shells", "processName": ["bash", "sh", "dash", "zsh"]},
                {"name": "tools", "processName": [f"tool{k}", "nc", "curl", "wget"]},
                {"name": "tmp", "processExecutable": [f"/usr/local/bin/tool{k}", "/tmp/**"]},
            ],
            "responses": [{"match": ["shells", "tools", "tmp"], "actions": ["alert"]}],
        },
        "file": {
            "selectors": [
                {
                    "name": "config",
                    "operation": ["modifyFile", "createFile"],
                    "targetFilePath": [f"/etc/app{k}/**", "/etc/passwd", "/etc/shadow"],
                }
            ],
            "responses": [{"match": ["config"], "actions": ["log"]}],
        },
    }


def cpol_body(run: str, ns: str, app: int, k: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ContainerPolicy",
        "metadata": {"name": f"cp-app{app}", "namespace": ns, "labels": {BENCH: run}},
        "spec": {"podSelector": {"matchLabels": {"app": f"app-{app}"}}, **spec(k)},
    }


def ccpol_body(run: str, name: str, tier: str | None, app: int | None, k: int) -> dict[str, Any]:
    scope: dict[str, Any] = (
        {"namespaceSelector": {"matchLabels": {"env": "prod"}}}
        if tier is None
        else {
            "namespaceSelector": {"matchLabels": {"tier": tier}},
            "podSelector": {"matchLabels": {"app": f"app-{app}"}},
        }
    )
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterContainerPolicy",
        "metadata": {"name": name, "labels": {BENCH: run}},
        "spec": {**scope, **spec(k)},
    }


def pod_body(run: str, ns: str, name: str, node: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {BENCH: run, "app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
    }


# --- bulk calls ------------------------------------------------------------------------


def bulk(what: str, calls: Iterable[Callable[[], Any]], threads: int) -> float:
    """Run the calls on a thread pool; returns the seconds taken."""
    started = time.monotonic()
    todo = list(calls)
    done = 0

    def call(fn: Callable[[], Any]) -> None:
        resp = fn()
        if hasattr(resp, "data"):
            resp.data  # noqa: B018 - read the body: frees the pooled connection
            resp.release_conn()

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(call, todo):
            done += 1
            if done % 5000 == 0:
                log(f"  {what}: {done}/{len(todo)}")
    seconds = time.monotonic() - started
    log(f"created {len(todo)} {what} in {seconds:.1f} s ({len(todo) / seconds:.0f}/s)")
    return seconds


def ignore_404(fn: Callable[[], Any]) -> None:
    """Call; gone already is fine; a broken connection is tried again (a loaded apiserver
    can drop the long answer of a delete-collection: it lists what it deleted)."""
    for attempt in range(5):
        try:
            resp = fn()
            if hasattr(resp, "release_conn"):
                resp.data  # noqa: B018 - read the body: frees the pooled connection
                resp.release_conn()
            return
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            return
        except urllib3.exceptions.HTTPError:
            if attempt == 4:
                raise
            time.sleep(1.0)


# --- following the bundles -------------------------------------------------------------


@dataclass
class Seen:
    policies: frozenset[str]
    raw_bytes: int
    stored_bytes: int
    at: float


class BundleWatch(threading.Thread):
    """A raw watch on the bundle ConfigMaps: node → what its bundle holds, when seen."""

    def __init__(self, core: Any, namespace: str) -> None:
        super().__init__(daemon=True, name="bundle-watch")
        self.core = core
        self.namespace = namespace
        self.seen: dict[str, Seen] = {}
        self.largest = (0, 0, "")  # raw bytes, stored bytes, node
        self.cond = threading.Condition()
        self.stopping = False

    def run(self) -> None:
        rv = ""
        while not self.stopping:
            try:
                resp = self.core.list_namespaced_config_map(
                    self.namespace, label_selector=SELECTOR, watch=True,
                    resource_version=rv or None, timeout_seconds=120,
                    _preload_content=False,
                )  # fmt: skip
                buf = b""
                for chunk in resp.stream(1 << 16):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        rv = self._event(json.loads(line), rv)
            except Exception as exc:
                if not self.stopping:
                    log(f"bundle watch restarted: {exc}")
                    time.sleep(0.5)

    def _event(self, event: dict[str, Any], rv: str) -> str:
        obj = event["object"]
        if event["type"] == "ERROR":
            return ""  # expired: list again from now
        meta = obj["metadata"]
        node = (meta.get("annotations") or {}).get("stockade.dev/node", "")
        now = time.monotonic()
        with self.cond:
            if event["type"] == "DELETED":
                self.seen.pop(node, None)
            else:
                # Sizes only: checking the bundle (`from_configmap`, ~6 ms) on every event
                # took the cores the operator and the apiserver are measured on.
                data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
                if BUNDLE_GZIP_KEY in binary:
                    stored = len(binary[BUNDLE_GZIP_KEY])
                    raw = len(gzip.decompress(base64.b64decode(binary[BUNDLE_GZIP_KEY])))
                else:
                    raw = stored = len(data.get(BUNDLE_KEY, "").encode())
                held = meta["annotations"].get("stockade.dev/policies", "")
                self.seen[node] = Seen(frozenset(filter(None, held.split("\n"))), raw, stored, now)
                if raw > self.largest[0]:
                    self.largest = (raw, stored, node)
            self.cond.notify_all()
        return str(meta.get("resourceVersion") or rv)

    def wait(self, what: str, done: Callable[[dict[str, Seen]], bool], timeout: float) -> float:
        """Block until `done(seen)`; returns the monotonic time of the event that made it so."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not done(self.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
                self.cond.wait(min(left, 1.0))
            return max((s.at for s in self.seen.values()), default=time.monotonic())


# --- the operator ------------------------------------------------------------------------


def holds(node: str, policy: str, seen: dict[str, Seen]) -> bool:
    return node in seen and policy in seen[node].policies


def all_hold(nodes: list[str], policy: str, seen: dict[str, Seen]) -> bool:
    return all(holds(node, policy, seen) for node in nodes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status size (VmHWM, VmRSS) in bytes; 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_pids() -> dict[str, int]:
    """The apiserver's and etcd's pids, from `services/up`'s state dir (none: not found)."""
    run = Path(os.environ.get("STOCKADE_STATE", "/tmp/stockade-services")) / "run"
    pids = {}
    for name in ("kube-apiserver", "etcd"):
        with contextlib.suppress(OSError, ValueError):
            pids[name] = int((run / f"{name}.pid").read_text())
    return pids


# --- the benchmark ---------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int)
    p.add_argument("--pods", type=int)
    p.add_argument("--policies", type=int)
    p.add_argument("--namespaces", type=int)
    p.add_argument("--samples", type=int, help="pod-binding latency samples")
    p.add_argument("--edits", type=int, default=3, help="policy edits timed, one after another")
    p.add_argument("--write-concurrency", type=int, default=16,
                   help="the operator's --write-concurrency")  # fmt: skip
    p.add_argument("--threads", type=int, default=32, help="parallel creates")
    p.add_argument("--timeout", type=float, default=1800, help="cold start limit, seconds")
    p.add_argument("--keep-log", type=Path, help="copy the operator's log here")
    p.add_argument("--profile", type=Path, help="run the operator under cProfile, stats here")
    add_arguments(p)
    args = p.parse_args()
    for name, full, quick in (("nodes", 1000, 20), ("pods", 30000, 200), ("policies", 500, 10),
                              ("namespaces", 50, 5), ("samples", 50, 5)):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.policies < 2:
        p.error("--policies must be >= 2 (one cluster policy at least)")

    config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = args.threads
    api = client.ApiClient(configuration)
    # Any: the calls take plain dicts and return raw responses (_preload_content=False).
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)

    run = os.urandom(3).hex()
    w = workload(run, args.nodes, args.pods, args.policies, args.namespaces)
    op_ns = f"sb-{run}-op"
    log(f"run {run}: {args.nodes} nodes, {args.pods} pods, {len(w.cpols)} ContainerPolicies, "
        f"{len(w.ccpols)} ClusterContainerPolicies, {args.namespaces} namespaces")  # fmt: skip
    results: list[tuple[str, str, str]] = []
    figures: list[Figure] = []
    op: subprocess.Popen[bytes] | None = None
    watch: BundleWatch | None = None
    log_path = Path(f"/tmp/operator-scale-{run}.log")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        subprocess.run(
            [str(KUBECTL), "apply", "--server-side", "-f", str(REPO / "crds")],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [str(KUBECTL), "wait", "--for=condition=Established", "--timeout=60s",
             "-f", str(REPO / "crds")],
            check=True, capture_output=True,
        )  # fmt: skip
        core.create_namespace({"metadata": {"name": op_ns, "labels": {BENCH: run}}})
        for ns, labels in w.namespaces.items():
            core.create_namespace({"metadata": {"name": ns, "labels": labels}})
        t = args.threads
        raw = {"_preload_content": False}
        create_s = bulk("nodes", (
            partial(core.create_node, {"metadata": {"name": n, "labels": {BENCH: run}}}, **raw)
            for n in w.nodes), t)  # fmt: skip
        create_s += bulk("pods", (
            partial(core.create_namespaced_pod, ns, pod_body(run, ns, name, node, f"app-{app}"),
                    **raw)
            for ns, name, node, app in w.pods), t)  # fmt: skip
        create_s += bulk("policies", [
            *(partial(custom.create_namespaced_custom_object, GROUP, VERSION, ns,
                      "containerpolicies", cpol_body(run, ns, a, k), **raw)
              for k, (ns, a) in enumerate(w.cpols)),
            *(partial(custom.create_cluster_custom_object, GROUP, VERSION,
                      "clustercontainerpolicies", ccpol_body(run, name, tier, a, k), **raw)
              for k, (name, tier, a) in enumerate(w.ccpols)),
        ], t)  # fmt: skip
        results.append(("objects created (nodes+pods+policies)", f"{create_s:.1f} s", "-"))

        watch = BundleWatch(core, op_ns)
        watch.start()
        port = free_port()
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        with log_path.open("wb") as out:
            profile = (
                [sys.executable, "-m", "cProfile", "-o", str(args.profile)] if args.profile else []
            )
            op = subprocess.Popen(
                [*profile, str(STOCKADE), "operator", "--namespace", op_ns, "--standalone",
                 "--metrics-port", str(port), "--log-level", "info",
                 "--write-concurrency", str(args.write_concurrency)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        log(f"operator pid {op.pid}, log {log_path}")
        expected = {n: frozenset(v) for n, v in w.expected.items()}

        first_bundle: list[float] = []

        def all_written(seen: dict[str, Seen]) -> bool:
            if seen and not first_bundle:
                first_bundle.append(time.monotonic())
            if op is not None and op.poll() is not None:
                raise RuntimeError(f"the operator exited {op.returncode}; see {log_path}")
            return all(n in seen and seen[n].policies == expected[n] for n in expected)

        done_at = watch.wait("all bundles from cold", all_written, args.timeout)
        cold = done_at - started
        log(f"cold: all {len(expected)} bundles in {cold:.1f} s")
        # Checked once more with a list, as a sensor-independent reader would.
        listed = json.loads(core.list_namespaced_config_map(
            op_ns, label_selector=SELECTOR, _preload_content=False).data)  # fmt: skip
        by_node = {
            i["metadata"]["annotations"]["stockade.dev/node"]: frozenset(
                filter(None, i["metadata"]["annotations"]["stockade.dev/policies"].split("\n")))
            for i in listed["items"]
        }  # fmt: skip
        wrong = [n for n in expected if by_node.get(n) != expected[n]]
        assert not wrong, f"listed bundles differ from the expected on {len(wrong)} nodes"
        until_first = (first_bundle[0] - started) if first_bundle else float("nan")
        cpu_cold = cpu_seconds(op.pid)
        results.append((
            "cold: start → all bundles written (list-checked)", f"{cold:.1f} s",
            f"first bundle seen after {until_first:.1f} s; operator CPU {cpu_cold:.0f} s; "
            f"load {load_before:.1f} before",
        ))  # fmt: skip
        figures.append(figure("cold: start → all bundles written", cold, "s"))
        sizes = [len(v) for v in expected.values()]
        results.append(("policies per bundle (min/mean/max)",
                        f"{min(sizes)}/{statistics.mean(sizes):.0f}/{max(sizes)}",
                        "-"))  # fmt: skip

        # Let the first pass's status writes settle before the edit.
        def metric_quiet() -> None:
            last, stable_since = -1.0, time.monotonic()
            while time.monotonic() - stable_since < 3.0:
                now = scrape(port).get("stockade_operator_reconciles_total", 0.0)
                if now != last:
                    last, stable_since = now, time.monotonic()
                time.sleep(0.5)

        metric_quiet()

        # 2. Edits of the widest policy (cluster-wide, env=prod namespaces), one at a time.
        name = w.ccpols[0][0]
        affected = [n for n, v in expected.items() if f"{name}@1" in v]
        edits: list[float] = []
        cpu: list[float] = []  # the operator's CPU seconds in each edit
        services = service_pids()
        service_cpu: dict[str, list[float]] = {s: [] for s in services}  # theirs, the same
        for generation in range(2, 2 + args.edits):
            before, after = f"{name}@{generation - 1}", f"{name}@{generation}"
            t0, cpu0 = time.monotonic(), cpu_seconds(op.pid)
            service0 = {s: cpu_seconds(pid) for s, pid in services.items()}
            custom.patch_cluster_custom_object(
                GROUP, VERSION, "clustercontainerpolicies", name,
                {"spec": {"mode": "audit" if generation % 2 == 0 else "enforce"}},
            )  # fmt: skip
            edit_done = watch.wait(
                f"{after} in {len(affected)} bundles", partial(all_hold, affected, after), 300
            )
            edits.append(edit_done - t0)
            cpu.append(cpu_seconds(op.pid) - cpu0)
            for s, pid in services.items():
                service_cpu[s].append(cpu_seconds(pid) - service0[s])
            log(f"edit to generation {generation}: {edits[-1]:.2f} s")
            for n in affected:
                expected[n] = (expected[n] - {before}) | {after}
            metric_quiet()
        edit = statistics.median(edits)
        results.append((f"policy edit → all {len(affected)} affected bundles",
                        f"{edit:.2f} s", f"median of {len(edits)}: "
                        f"{', '.join(f'{e:.2f}' for e in edits)}; target <= 5 s"))  # fmt: skip
        rates = [len(affected) / e for e in edits]
        results.append(("bundle writes per second in an edit", f"{statistics.median(rates):.0f}/s",
                        f"{args.write_concurrency} in flight; CPU in the edits: operator "
                        f"{', '.join(f'{c:.1f}' for c in cpu)} s"
                        + "".join(f"; {s} {', '.join(f'{c:.1f}' for c in cs)} s"
                                  for s, cs in service_cpu.items())))  # fmt: skip
        figures.append(figure(f"policy edit → all {len(affected)} affected bundles", edits, "s",
                              "<= 5"))  # fmt: skip
        figures.append(figure("bundle writes per second in an edit", rates, "1/s",
                              note=f"{args.write_concurrency} in flight"))  # fmt: skip

        # 3. A pod bound to a node whose bundle lacks its policy.
        rng = random.Random(2)
        latencies = []
        for i in range(args.samples):
            node = rng.choice(w.nodes)
            missing = [(ns, a) for ns, a in w.cpols if f"{ns}/cp-app{a}@1" not in expected[node]]
            ns, a = rng.choice(missing)
            want = f"{ns}/cp-app{a}@1"
            t0 = time.monotonic()
            core.create_namespaced_pod(
                ns, pod_body(run, ns, f"lat{i:03d}", node, f"app-{a}"), _preload_content=False
            ).release_conn()
            done = watch.wait(f"{want} on {node}", partial(holds, node, want), 60)
            latencies.append(done - t0)
            expected[node] = expected[node] | {want}
            time.sleep(rng.uniform(0.05, 0.3))
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
        results.append((f"pod bound → bundle has its policy ({len(latencies)} samples)",
                        f"p50 {p50:.3f} s, p99 {p99:.3f} s, max {latencies[-1]:.3f} s",
                        "target p99 <= 2 s"))  # fmt: skip
        figures += [
            figure(f"pod bound → bundle has its policy, p50 of {len(latencies)}", p50, "s"),
            figure(f"pod bound → bundle has its policy, p99 of {len(latencies)}", p99, "s",
                   "<= 2"),
        ]  # fmt: skip

        # 4, 5. Memory and size.
        hwm = proc_status(op.pid, "VmHWM")
        rss = proc_status(op.pid, "VmRSS")
        results.append(("operator peak RSS (VmHWM)", f"{hwm / MiB:.0f} MiB",
                        f"now {rss / MiB:.0f} MiB; target <= 500 MiB"))  # fmt: skip
        figures.append(figure("operator peak RSS (VmHWM)", hwm / MiB, "MiB", "<= 500"))
        big, stored, where = watch.largest
        results.append(("largest bundle (canonical JSON)", f"{big / 1024:.1f} KiB",
                        f"{where}; stored {stored / 1024:.1f} KiB; target <= 256 KiB"))  # fmt: skip
        figures.append(figure("largest bundle (canonical JSON)", big / 1024, "KiB", "<= 256"))
        m = scrape(port)
        count = m.get("stockade_operator_compile_seconds_count", 0.0)
        total = m.get("stockade_operator_compile_seconds_sum", 0.0)
        results.append(("compiles / time compiling",
                        f"{count:.0f} / {total:.1f} s",
                        f"bundle writes {m.get(WRITES_METRIC, 0):.0f}, "
                        f"status writes {m.get('stockade_operator_status_writes_total', 0):.0f}, "
                        f"operator CPU total {cpu_seconds(op.pid):.0f} s"))  # fmt: skip
    finally:
        if op is not None:
            if op.poll() is None:
                op.send_signal(signal.SIGTERM)
                try:
                    op.wait(30)
                except subprocess.TimeoutExpired:
                    op.kill()
                    op.wait()
            if args.keep_log:
                args.keep_log.write_bytes(log_path.read_bytes())
        if watch is not None:
            watch.stopping = True
        cleanup(core, custom, w, op_ns)

    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nStockade operator scale: {args.nodes} nodes, {args.pods} pods, "
          f"{len(w.cpols)} ContainerPolicies + {len(w.ccpols)} ClusterContainerPolicies, "
          f"{args.namespaces} namespaces; {os.cpu_count()} CPUs, load now {load}\n")  # fmt: skip
    width = max(len(r[0]) for r in results)
    vwidth = max(len(r[1]) for r in results)
    for what, value, note in results:
        print(f"{what:<{width}}  {value:<{vwidth}}  {note}")
    note = f"{args.nodes} nodes, {args.pods} pods, {args.policies} policies"
    for f in figures:
        f.setdefault("note", note)
    report(args, figures)
    return 0


def cleanup(core: Any, custom: Any, w: Workload, op_ns: str) -> None:
    """Delete everything the run created; no controllers exist, so finalize namespaces too."""
    log("cleaning up")
    selector = f"{BENCH}={w.run}"
    raw = {"_preload_content": False}

    def empty_and_delete(ns: str) -> None:
        ignore_404(
            partial(core.delete_collection_namespaced_pod, ns, grace_period_seconds=0, **raw)
        )
        ignore_404(partial(custom.delete_collection_namespaced_custom_object,
                           GROUP, VERSION, ns, "containerpolicies", **raw))  # fmt: skip
        ignore_404(partial(core.delete_collection_namespaced_config_map, ns, **raw))
        ignore_404(partial(core.delete_collection_namespaced_event, ns, **raw))
        ignore_404(partial(core.delete_namespace, ns, **raw))
        finalized = {"metadata": {"name": ns}, "spec": {"finalizers": []}}
        ignore_404(partial(core.replace_namespace_finalize, ns, finalized, **raw))

    with ThreadPoolExecutor(8) as pool:  # one namespace per thread; errors re-raised
        list(pool.map(empty_and_delete, [*w.namespaces, op_ns]))
    ignore_404(partial(custom.delete_collection_cluster_custom_object,
                       GROUP, VERSION, "clustercontainerpolicies",
                       label_selector=selector, **raw))  # fmt: skip
    ignore_404(partial(core.delete_collection_node, label_selector=selector, **raw))
    left = len(core.list_node(label_selector=selector).items) + len(
        core.list_pod_for_all_namespaces(label_selector=selector, limit=1).items
    )
    log("cleaned up" if not left else f"cleanup left {left} objects (nodes/pods)")


if __name__ == "__main__":
    sys.exit(main())
