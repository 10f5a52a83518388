"""The standalone sensor with `--output elasticsearch:URL`, the product's default policy and
real processes in a container cgroup: what a Defend for Containers user queries is there."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from tests.integration.conftest import es, services_env  # noqa: F401 (fixtures)

from .conftest import REPO, Cgroup
from .scenario import PY, driver_argv

pytestmark = [pytest.mark.kernel, pytest.mark.integration]

WEB = {
    "container": {"id": "c0ffee42", "name": "nginx", "imageFullName": "docker.io/library/nginx",
                  "imageName": "nginx", "imageTag": "1.27"},
    "kubernetes": {"namespace": "shop", "podName": "web-1", "podLabels": {"app": "web"},
                   "podAnnotations": {"team": "shop"}, "podIp": "10.0.0.7",
                   "podOwnerKind": "ReplicaSet"},
}  # fmt: skip


@pytest.fixture
def ns(es: Elasticsearch) -> Iterator[str]:  # noqa: F811
    name = f"k{uuid.uuid4().hex[:8]}"
    yield name
    es.options(ignore_status=404).indices.delete_data_stream(name=f"logs-cloud_defend.*-{name}")


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def _find(es: Elasticsearch, index: str, query: dict[str, Any], n: int = 1) -> list[Any]:  # noqa: F811
    """Poll until at least n documents match (the writer flushes every 0.5 s)."""
    deadline = time.monotonic() + 30
    while True:
        es.indices.refresh(index=index, ignore_unavailable=True)
        hits = es.search(index=index, query=query, size=100, sort=["@timestamp"],
                         ignore_unavailable=True)["hits"]["hits"]  # fmt: skip
        if len(hits) >= n or time.monotonic() > deadline:
            return [h["_source"] for h in hits]
        time.sleep(0.5)


def test_exec_and_drift_alert_land_in_their_data_streams(
    es: Elasticsearch,  # noqa: F811
    services_env: dict[str, str],  # noqa: F811
    ns: str, cgroup: Cgroup, workdir: Path, tiny: Path, _built: None,
) -> None:  # fmt: skip
    (workdir / "bin").mkdir()
    exe = workdir / "bin" / "tiny"
    exe.write_bytes(tiny.read_bytes())
    exe.chmod(0o755)
    containers = workdir / "containers.json"
    containers.write_text(json.dumps({str(cgroup.path): WEB}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade.sensor.cli", "--standalone",
         "--policy", str(REPO / "examples" / "policies" / "default.yaml"),
         "--containers", str(containers), "--output", "elasticsearch",
         "--es-namespace", ns, "--state-dir", str(workdir / "state")],
        stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin",  # URL, and credentials and CA when security is on
             **{k: v for k, v in services_env.items() if k.startswith("ELASTICSEARCH_")}},
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while "applied generation 1" not in lines.get(timeout=deadline - time.monotonic()):
            pass
        ops: list[list[Any]] = [["exec", str(exe)], ["create", str(workdir / "dropped"), 0o755]]
        res = subprocess.run(driver_argv(ops), preexec_fn=cgroup.join(), check=False,
                             capture_output=True, text=True, start_new_session=True)  # fmt: skip
        assert res.returncode == 0, res.stderr
        execs = _find(es, f"logs-cloud_defend.process-{ns}", {"bool": {"filter": [
            {"term": {"event.action": "exec"}},
            {"term": {"process.executable": str(exe)}}]}})  # fmt: skip
        alerts = _find(es, f"logs-cloud_defend.alerts-{ns}", {"term": {"file.path": str(
            workdir / "dropped")}})  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    tail = []
    while not lines.empty():
        tail.append(lines.get())
    assert len(execs) == 1, tail
    e = execs[0]
    assert e["event"]["kind"] == "event" and e["event"]["category"] == ["process"]
    assert e["data_stream"]["dataset"] == "cloud_defend.process"
    assert e["process"]["args"] == [str(exe)]
    assert e["process"]["parent"]["pid"] > 1 and e["process"]["parent"]["entity_id"]
    assert e["process"]["session_leader"]["pid"] == e["process"]["group_leader"]["pid"]
    assert e["container"] == {"id": "c0ffee42", "name": "nginx",
                              "image": {"name": "nginx", "tag": ["1.27"]}}  # fmt: skip
    assert e["user"]["id"] == e["process"]["user"]["id"] == "0"
    assert e["host"]["boot"]["id"] and e["ecs"]["version"] and e["agent"]["type"] == "stockade"
    assert e["orchestrator"]["namespace"] == "shop"
    assert e["orchestrator"]["resource"] == {
        "type": "pod", "name": "web-1", "label": ["app:web"], "annotation": ["team:shop"],
        "ip": ["10.0.0.7"], "parent": {"type": "ReplicaSet"}}  # fmt: skip
    assert e["cloud_defend"]["matched_selectors"] == ["allProcesses"]
    assert len(alerts) == 1, tail
    a = alerts[0]
    assert a["event"]["kind"] == "alert" and a["event"]["category"] == ["file"]
    assert a["cloud_defend"]["matched_selectors"] == ["executableChanges"]
    # the process cache ties the file alert and the exec to the driver's own exec
    assert a["process"]["executable"] == e["process"]["parent"]["executable"] == PY
    assert a["process"]["entity_id"] == e["process"]["parent"]["entity_id"]
    same = _find(es, "logs-cloud_defend.*-" + ns,
                 {"term": {"process.entity_id": e["process"]["entity_id"]}}, n=3)  # fmt: skip
    # one process: its fork, exec and end (@timestamp is a millisecond `date`: ties)
    assert sorted(d["event"]["action"] for d in same) == ["end", "exec", "fork"]
    stats = json.loads(next(t for t in reversed(tail) if " stats " in t).split(" stats ", 1)[1])
    assert stats["es_delivered"] == stats["written"] and stats["es_dropped_alerts"] == 0, stats
