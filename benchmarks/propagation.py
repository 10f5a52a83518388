"""How fast a change is in force on a node (root, real apiserver; not a test).

    eval "$(services/up)"; bpf/build
    .venv/bin/python benchmarks/propagation.py [--changes 100] [--bindings 50] [--cgroups 100]
    .venv/bin/python benchmarks/propagation.py --quick

One node stood in for as in tests/node (`tests.node.kubelet.Kubelet`: the Node, Pods bound to
it, containerd-named cgroups under the cgroup v2 hierarchy, real processes in them), the
real `stockade operator --standalone` and `stockade sensor --node-name` (kill mode where the
kernel has neither BPF LSM nor fmod_ret). In a container, a C loop runs a tool (a copy of
`true`) again and again (every `--interval-us`) and prints the moment (CLOCK_MONOTONIC, the
clock of `time.monotonic`) an exec's outcome differs from the previous one's: ran, or
killed by the sensor. Three figures, each p50 and p99:

(a) `kubectl apply` of a policy change → the first exec decided by it: a ContainerPolicy is
    switched between blocking the tool and blocking another path, `--changes` times; from
    just before kubectl starts to the end of the first exec with the new outcome (target
    p99 <= 2 s);
(b) a pod bound to the node, whose bundle lacked its policy (a ContainerPolicy selecting
    only that pod's label) → that bundle in force on the sensor: from just before the pod
    is created and bound to the sensor's `applied generation` log line (its time, to the
    millisecond) (target p99 <= 2 s);
(c) a container's cgroup made → its pod-level predicates in force: a pod of a policy already
    in force on the node starts (as a kubelet would: bound, then its cgroups made), and the
    loop starts in its container at once; from the container cgroup's mkdir to the end of
    the first exec killed (an upper bound: it includes starting the loop, a few ms) (target
    p99 <= 100 ms). Also reported: how many first execs were already decided.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from _figures import Figure, add_arguments, figure, report
from kubernetes import client, config

from stockade.local.kubelet import Kubelet, Pod

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the operator and sensor processes of tests/

from tests.integration.conftest import force_delete_namespace, install_crds  # noqa: E402
from tests.node.sensor import SensorProcess  # noqa: E402
from tests.operator.conftest import Operator  # noqa: E402

KUBECTL = Path(os.environ.get("STOCKADE_BIN", "/var/cache/stockade/bin")) / "kubectl"
KILLED = 9

# argv: tool, microseconds between execs, seconds at most. First reads a line from stdin: a
# cgroup.procs file to join (so that starting it is no part of what is measured). Then
# fork+exec+wait the tool; print "<CLOCK_MONOTONIC ns at the exec's end> <0 ran | 9 killed |
# other status>" for the first exec and each one whose outcome differs from the previous one's.
LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static long long now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(int argc, char **argv) {
    char *args[] = {argv[1], NULL};
    useconds_t pause = (useconds_t)atol(argv[2]);
    char procs[4096];
    if (!fgets(procs, sizeof procs, stdin)) return 2;
    procs[strcspn(procs, "\n")] = 0;
    FILE *f = fopen(procs, "w");
    if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f)) { perror(procs); return 2; }
    long long end = now() + (long long)(atof(argv[3]) * 1e9);
    int last = -1;
    while (now() < end) {
        pid_t p = fork();
        if (!p) { execv(argv[1], args); _exit(127); }
        int st; waitpid(p, &st, 0);
        int outcome = WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st);
        if (outcome != last) {
            printf("%lld %d\n", now(), outcome); fflush(stdout); last = outcome;
        }
        if (pause) usleep(pause);
    }
    return 0;
}
"""


def log(message: str) -> None:
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"[{time.strftime('%H:%M:%S')} load {load}] {message}", file=sys.stderr, flush=True)


def kubectl(*args: str, input: str | None = None, check: bool = True) -> Any:
    """`tests.integration.conftest.Kubectl`'s signature (its helpers take one)."""
    return subprocess.run([str(KUBECTL), *args], input=input, capture_output=True, text=True,
                          check=check, timeout=120)  # fmt: skip


def blocking(namespace: str, name: str, labels: dict[str, str], executable: Path) -> str:
    """A ContainerPolicy that blocks (kills, here) execs of `executable` in matching pods."""
    return json.dumps({
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": labels},
            "process": {
                "selectors": [{"name": "tool", "operation": ["exec"],
                               "processExecutable": [str(executable)]}],
                "responses": [{"match": ["tool"], "actions": ["alert", "block"]}],
            },
        },
    })  # fmt: skip


class Outcomes(threading.Thread):
    """The loop's lines, as (monotonic seconds, outcome), in a queue."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: queue.Queue[tuple[float, int]] = queue.Queue()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ns, outcome = line.split()
            self.lines.put((int(ns) / 1e9, int(outcome)))

    def next(self, outcome: int, after: float, timeout: float) -> float:
        """The end of the first exec with `outcome` that ended after `after`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, seen = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no exec with outcome {outcome} in {timeout} s") from None
            if seen == outcome and at > after:
                return at


def json_lines(path: Path) -> list[dict[str, Any]]:
    """A log's JSON lines (anything else, e.g. a traceback, skipped)."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def after(starts: list[float], events: list[float]) -> list[float]:
    """For each start, the seconds to the first event at or after it (none: skipped)."""
    ordered = sorted(events)
    spans = []
    for start in starts:
        later = [e for e in ordered if e >= start]
        if later:
            spans.append(later[0] - start)
    return spans


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 (the nearest rank)."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[round(0.99 * (len(ordered) - 1))]


class Bench:
    """One node, its operator and sensor, and the three measurements on them."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        config.load_kube_config()  # type: ignore[no-untyped-call]
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.run = os.urandom(3).hex()
        self.namespace = f"prop-{self.run}"
        self.op_namespace = f"prop-{self.run}-op"
        self.tool = work / "stk-prop-tool"
        self.other = work / "stk-prop-other"  # what the policy blocks when it spares the tool
        self.loop = work / "loop"
        self.kubelet = Kubelet(self.core, f"prop-{self.run}-node")
        self.operator = Operator(os.environ["KUBECONFIG"], self.op_namespace, work / "op.log")
        (work / "sensor").mkdir()
        self.sensor = SensorProcess(self.kubelet.node, self.op_namespace,
                                    os.environ["KUBECONFIG"], work / "sensor")  # fmt: skip

    @contextmanager
    def node(self) -> Iterator[None]:
        """The CRDs, namespaces, operator, node and its sensor; all gone at the end."""
        shutil.copy("/bin/true", self.tool)
        shutil.copy("/bin/true", self.other)
        (self.work / "loop.c").write_text(LOOP_C)
        subprocess.run(["cc", "-O2", "-o", str(self.loop), str(self.work / "loop.c")], check=True)
        install_crds(kubectl)
        for ns in (self.namespace, self.op_namespace):
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        try:
            self.operator.start("--standalone")
            self.kubelet.register()
            self.sensor.start()
            log(f"node {self.kubelet.node}: operator, sensor ready; logs in {self.work}")
            yield
        finally:
            if self.sensor.proc is not None:
                self.sensor.stop()
            self.operator.stop()
            self.kubelet.close()
            for ns in (self.namespace, self.op_namespace):
                force_delete_namespace(kubectl, self.api, ns)

    def loop_ready(self, seconds: float) -> Outcomes:
        """The loop, started and waiting to be told which container to join (`join`)."""
        proc = subprocess.Popen([str(self.loop), str(self.tool), str(self.args.interval_us),
                                 str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)  # fmt: skip
        outcomes = Outcomes(proc)
        outcomes.start()
        return outcomes

    def join(self, outcomes: Outcomes, pod: Pod) -> None:
        """Into the pod's `app` container, as its runtime would start a process there."""
        assert outcomes.proc.stdin is not None
        outcomes.proc.stdin.write(f"{pod.containers['app'].cgroup / 'cgroup.procs'}\n")
        outcomes.proc.stdin.close()
        pod.processes.append(outcomes.proc)

    def start_loop(self, pod: Pod, seconds: float) -> Outcomes:
        outcomes = self.loop_ready(seconds)
        self.join(outcomes, pod)
        return outcomes

    def apply(self, policy: str) -> float:
        """kubectl apply; returns the monotonic time just before kubectl started."""
        t0 = time.monotonic()
        kubectl("apply", "-f", "-", input=policy)
        return t0

    def changes(self) -> tuple[list[float], dict[str, list[float]]]:
        """(a) `kubectl apply` → the first exec decided by the change; and where the time
        went: seconds from the apply to kubectl's return, the operator's bundle write (its
        log), the sensor's apply (its log), for each change."""
        labels = {"app": "edit"}
        pod = self.kubelet.start_pod(self.namespace, "edit-0", labels)
        outcomes = self.start_loop(pod, 3600)
        spares = blocking(self.namespace, "edit", labels, self.other)
        blocks = blocking(self.namespace, "edit", labels, self.tool)
        self.apply(spares)
        outcomes.next(0, 0.0, 30)
        time.sleep(1.0)  # the first bundle with the policy written and applied
        spans: list[float] = []
        starts: list[float] = []  # time.time() of each apply
        returned: list[float] = []
        for i in range(self.args.changes):
            starts.append(time.time())
            t0 = self.apply(blocks if i % 2 == 0 else spares)
            returned.append(time.monotonic() - t0)
            spans.append(outcomes.next(KILLED if i % 2 == 0 else 0, t0, 30) - t0)
            time.sleep(0.1 + 0.2 * (i % 3) / 2)  # not in step with the operator's debounce
        outcomes.proc.kill()
        written = [
            datetime.fromisoformat(line["timestamp"]).timestamp()
            for line in json_lines(self.operator.log)
            if line.get("message") == "bundle written" and line.get("node") == self.kubelet.node
        ]
        applied = [datetime.fromisoformat(line["time"]).timestamp()
                   for line in self.applied_lines()]  # fmt: skip
        stages = {
            "kubectl apply returned": returned,
            "bundle written by the operator": after(starts, written),
            "bundle applied by the sensor": after(starts, applied),
        }
        return spans, stages

    def bindings(self) -> list[float]:
        """(b) a pod bound → the bundle with its policy applied by the sensor."""
        spans = []
        for i in range(self.args.bindings):
            labels = {"app": f"bind-{i}"}
            self.apply(blocking(self.namespace, f"bind-{i}", labels, self.tool))
            time.sleep(0.5)  # the policy's status written; no bundle holds it (no pod)
            applied = len(self.applied_lines())
            t0 = time.time()
            self.kubelet.start_pod(self.namespace, f"bind-{i}", labels)
            deadline = time.monotonic() + 30
            while len(lines := self.applied_lines()) == applied:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bind-{i}: no bundle applied in 30 s")
                time.sleep(0.01)
            at = datetime.fromisoformat(lines[applied]["time"]).timestamp()
            spans.append(at - t0)
        return spans

    def applied_lines(self) -> list[dict[str, Any]]:
        return [
            line for line in json_lines(self.sensor.log)
            if str(line.get("message", "")).startswith("applied generation")
        ]  # fmt: skip

    def cgroups(self) -> tuple[list[float], int]:
        """(c) a container's cgroup made → its first exec decided by its pod's facts."""
        labels = {"app": "early"}
        first = self.kubelet.start_pod(self.namespace, "early-0", labels)
        outcomes = self.start_loop(first, 30)
        self.apply(blocking(self.namespace, "early", labels, self.tool))
        outcomes.next(KILLED, 0.0, 30)
        outcomes.proc.kill()
        spans, decided = [], 0
        for i in range(1, self.args.cgroups + 1):
            outcomes = self.loop_ready(10)
            pod = self.kubelet.start_pod(self.namespace, f"early-{i}", labels, status=False)
            made = time.monotonic()  # the container's cgroup is the last thing start_pod makes
            self.join(outcomes, pod)
            at, outcome = outcomes.lines.get(timeout=10)
            decided += outcome == KILLED
            spans.append((at if outcome == KILLED else outcomes.next(KILLED, 0.0, 10)) - made)
            pod.delete()
        return spans, decided


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--changes", type=int, help="policy changes timed (a); default 100")
    p.add_argument("--bindings", type=int, help="pods bound (b); default 50")
    p.add_argument("--cgroups", type=int, help="containers started (c); default 100")
    p.add_argument("--interval-us", type=int, default=2000, help="between the loop's execs")
    p.add_argument("--keep", action="store_true", help="keep the logs' directory")
    add_arguments(p)
    args = p.parse_args()
    for name, full, quick in (("changes", 100, 6), ("bindings", 50, 3), ("cgroups", 100, 5)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if os.geteuid() != 0:
        p.error("needs root: makes cgroups, runs the sensor")
    work = Path(tempfile.mkdtemp(prefix="stockade-propagation-"))
    bench = Bench(args, work)
    figures: list[Figure] = []
    with bench.node():
        load = os.getloadavg()[0]
        a, stages = bench.changes()
        log(f"(a) {len(a)} changes: p50 {percentiles(a)[0]:.3f} s, p99 {percentiles(a)[1]:.3f} s")
        for stage, spans in stages.items():
            p50, p99 = percentiles(spans)
            log(f"    {stage}: p50 {p50:.3f} s, p99 {p99:.3f} s")
        b = bench.bindings()
        log(f"(b) {len(b)} bindings: p50 {percentiles(b)[0]:.3f} s, "
            f"p99 {percentiles(b)[1]:.3f} s")  # fmt: skip
        c, decided = bench.cgroups()
        log(f"(c) {len(c)} containers: p50 {percentiles(c)[0] * 1000:.1f} ms, "
            f"p99 {percentiles(c)[1] * 1000:.1f} ms, first exec decided in {decided}")  # fmt: skip
        report_: Any = client.CustomObjectsApi(bench.api).get_cluster_custom_object(
            "stockade.dev", "v1alpha1", "nodepolicyreports", bench.kubelet.node
        )
        mode = report_.get("sensor", {}).get("mode", "?")
    note = (f"sensor mode {mode}; load {load:.1f} at the start ({os.cpu_count()} CPUs); "
            f"{len(a)} changes, {len(b)} pods bound, {len(c)} containers")  # fmt: skip
    for name, values, unit, scale, target in (
        ("kubectl apply → first operation decided by the change", a, "s", 1, "<= 2"),
        ("pod bound → its policy's bundle in force on the node", b, "s", 1, "<= 2"),
        ("container cgroup made → pod-level predicates in force", c, "ms", 1000, "<= 100"),
    ):
        p50, p99 = percentiles(values)
        figures += [
            figure(f"{name}, p50", p50 * scale, unit, note=note),
            figure(f"{name}, p99", p99 * scale, unit, target, note=note),
        ]
    figures += [
        figure(f"kubectl apply → {stage}, p50", percentiles(spans)[0], "s", note=note)
        for stage, spans in stages.items()
    ]
    figures.append(figure("new containers whose first exec was already decided",
                          100 * decided / len(c), "%", ">= 100", note=note))  # fmt: skip
    report(args, figures)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
