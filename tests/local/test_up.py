"""`stockade up`, `up` again, `demo`, `down`: the README's main command, as a user runs it.

A stack of its own (its own state directory and free ports, so the suite's services are
neither reused nor stopped by `down`): a whole Elasticsearch and control plane start, so
this takes about a minute. The commands are the real ones, run as subprocesses; what is
asserted is what a user would look at: the exit status, the running pieces, the alert in
Elasticsearch, BLOCKED on `kubectl get containerpolicies`, and nothing left after `down`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stockade.local.demo import BLOCK_POLICY, DEMO_NS
from stockade.local.stack import Stack
from tests.operator.conftest import STOCKADE, free_port

pytestmark = pytest.mark.kernel

PORTS = ("ETCD", "ETCD_PEER", "APISERVER", "ES", "ES_TRANSPORT", "OPERATOR", "SENSOR")


@pytest.fixture
def environ() -> Iterator[dict[str, str]]:
    """A state directory the Elasticsearch user can reach (not under pytest's 0700 tmp),
    free ports; `down` at the end whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("needs root: loads BPF programs, makes cgroups")
    state = Path(f"/tmp/stockade-up-test-{os.urandom(4).hex()}")
    env = {
        **os.environ,
        "STOCKADE_STATE": str(state),
        **{f"STOCKADE_{name}_PORT": str(free_port()) for name in PORTS},
    }
    try:
        yield env
    finally:
        subprocess.run([str(STOCKADE), "down"], env=env, capture_output=True, check=False)
        shutil.rmtree(state, ignore_errors=True)


def demo_alerts(url: str) -> list[dict[str, Any]]:
    """The alerts of the demo's namespace in Elasticsearch."""
    query = {"size": 100, "query": {"term": {"orchestrator.namespace": DEMO_NS}}}
    request = urllib.request.Request(
        f"{url}/logs-cloud_defend.alerts-default/_search",
        json.dumps(query).encode(), {"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return [hit["_source"] for hit in json.load(response)["hits"]["hits"]]


def stockade(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(STOCKADE), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"stockade {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def members(cgroup: Path) -> list[int]:
    """The processes in `cgroup` and below."""
    return [
        int(pid)
        for directory, _, _ in os.walk(cgroup)
        for pid in (Path(directory) / "cgroup.procs").read_text().split()
    ]


def test_up_twice_demo_down(environ: dict[str, str]) -> None:
    stack = Stack.from_env(environ)
    out = stockade(environ, "up")
    assert "sensor: reporting" in out and f"{stack.state}/env" in out and "demo" in out
    pids = [pid for pid in (stack.operator.pid(), stack.sensor.pid()) if pid is not None]
    assert len(pids) == 2
    generation = stack.kubectl("get", "ccpol", "default", "-o", "jsonpath={.metadata.generation}")

    again = stockade(environ, "up")  # harmless: finds every piece running, changes nothing
    assert "operator: running" in again and "sensor: running" in again
    assert [stack.operator.pid(), stack.sensor.pid()] == pids
    assert (
        stack.kubectl("get", "ccpol", "default", "-o", "jsonpath={.metadata.generation}").stdout
        == generation.stdout
    )

    story = stockade(environ, "demo")
    assert "exit status 137" in story or "Operation not permitted" in story, story
    # the sensor's bulk writer sends within seconds, and a document is searchable after the
    # next refresh: ask until both alerts are there (or the time is up, and say what was)
    drift: list[str] = []
    blocked: list[str] = []
    alerts: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (drift and blocked):
        alerts = demo_alerts(stack.env()["ELASTICSEARCH_URL"])
        drift = [
            a["file"]["path"] for a in alerts
            if "executableChanges" in a["cloud_defend"]["matched_selectors"]
        ]  # fmt: skip
        blocked = [
            a["process"]["executable"] for a in alerts
            if a["cloud_defend"]["outcome"] in ("killed", "denied")
        ]  # fmt: skip
        time.sleep(0.5)
    seen = [
        (
            a["file"]["path"] if "file" in a else a["process"]["executable"],
            a["cloud_defend"]["matched_selectors"],
            a["cloud_defend"]["outcome"],
        )
        for a in alerts
    ]
    assert drift == ["/tmp/nc"], (seen, story)  # the container's path, not the host's
    assert blocked == ["/tmp/nc"], (seen, story)
    columns = stack.kubectl(
        "get", "cpol", BLOCK_POLICY, "-n", DEMO_NS, "--no-headers",
        "-o", "custom-columns=B:.status.counts.blocked,N:.status.nodes.summary",
    ).stdout.split()  # fmt: skip
    assert columns == ["1", "1/1"]
    cgroup = Path(json.loads((stack.local / "demo.json").read_text())["cgroup"])
    pidfiles = ["run/etcd.pid", "run/kube-apiserver.pid", "elasticsearch/run/es.pid"]
    pids = [*pids, *(int((stack.state / f).read_text()) for f in pidfiles)]
    pids += members(cgroup)  # the demo container's main process
    assert len(pids) == 6 and all(alive(pid) for pid in pids)

    stockade(environ, "down")
    assert [pid for pid in pids if alive(pid)] == []
    assert not cgroup.exists() and not stack.state.exists()


def test_demo_before_up_and_down_on_nothing(tmp_path: Path) -> None:
    """Without a stack: `demo` says so in one line; `down` has nothing to do and succeeds."""
    env = {**os.environ, "STOCKADE_STATE": str(tmp_path / "state")}
    demo = subprocess.run(
        [str(STOCKADE), "demo"], env=env, capture_output=True, text=True, check=False
    )
    assert (demo.returncode, demo.stderr) == (
        1, "stockade demo: the stack is not up: run `stockade up` first\n"
    )  # fmt: skip
    assert stockade(env, "down") == ""
