"""Hot reload: bundles flip under an exec loop; bad inputs are refused, the old policy stays."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import Cgroup
from .scenario import Harness

pytestmark = pytest.mark.kernel

EXECS = 3000


def tiny_policy(binary: Path, actions: list[str]) -> str:
    return json.dumps(
        {
            "process": {
                "selectors": [{"name": "tiny", "operation": ["exec"],
                               "processExecutable": [str(binary)]}],
                "responses": [{"match": ["tiny"], "actions": actions}],
            }
        }
    )  # fmt: skip


def test_flips_under_an_exec_loop(
    harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    binary = workdir / "tiny"
    binary.write_bytes(tiny.read_bytes())
    binary.chmod(0o755)
    block, allow = tiny_policy(binary, ["alert", "block"]), tiny_policy(binary, ["log"])
    blocking: set[int] = set()
    # Flip far more often than the loop's execs take; its records (~2 MB) wait in the ring.
    harness.sensor.grace_s = 0.02
    harness.apply(block, {cgroup: {}})
    blocking.add(harness.sa.generation)  # type: ignore[union-attr]
    loop = subprocess.Popen(
        ["/bin/sh", "-c", f"i=0; while [ $i -lt {EXECS} ]; do {binary}; echo $?; i=$((i+1)); done"],
        preexec_fn=cgroup.join(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    flips = 0
    while loop.poll() is None:
        flips += 1
        harness.apply(allow if flips % 2 else block, {cgroup: {}})  # waits out the grace delay
        if flips % 2 == 0:
            blocking.add(harness.sa.generation)  # type: ignore[union-attr]
    statuses = [int(s) for s in (loop.stdout.read() if loop.stdout else "").split()]
    docs = harness.docs()
    execs = [d for d in docs if d["event"]["action"] == "exec"]
    assert len(statuses) == EXECS and len(execs) == EXECS  # every exec decided, none lost
    assert flips >= 5
    seen = set()
    for status, doc in zip(statuses, execs, strict=True):
        cd = doc["cloud_defend"]
        seen.add(cd["bundle_generation"])
        if cd["bundle_generation"] in blocking:
            assert (cd["actions"], cd["outcome"], status) == (["alert", "block"], "killed", 137)
        else:
            assert (cd["actions"], cd["outcome"], status) == (["log"], "allowed", 0)
    assert len(seen) >= 3  # the loop really ran across flips
    assert harness.sa.stats()["dropped"] == 0  # type: ignore[union-attr]
    harness.sensor.grace_s = 0.2


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line.rstrip("\n"))


def _wait_for(lines: queue.Queue[str], text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        if text in line:
            return line


def test_cli_reloads_refuses_bad_input_and_reports(
    cgroup: Cgroup, workdir: Path, tiny: Path, _built: None
) -> None:
    binary = workdir / "tiny"
    binary.write_bytes(tiny.read_bytes())
    binary.chmod(0o755)
    policy, containers, out = workdir / "p.yaml", workdir / "c.json", workdir / "out.jsonl"
    policy.write_text(tiny_policy(binary, ["log"]))
    containers.write_text(json.dumps({str(cgroup.path): {"kubernetes": {"namespace": "shop"}}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade.sensor.cli", "--standalone", "--policy", str(policy),
         "--containers", str(containers), "--output", f"jsonl:{out}", "--stats-interval", "1"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()

    def run_tiny() -> int:
        return subprocess.run([str(binary)], preexec_fn=cgroup.join(), check=False).returncode

    def last_doc() -> dict[str, object]:
        time.sleep(0.5)
        docs = [json.loads(line) for line in out.read_text().splitlines()]
        doc: dict[str, object] = [d for d in docs if d["event"]["action"] != "end"][-1]
        return doc

    try:
        assert "mode kill" in _wait_for(lines, "mode ")
        _wait_for(lines, "applied generation 1")
        assert run_tiny() == 0
        assert last_doc()["cloud_defend"]["bundle_generation"] == 1  # type: ignore[index]

        policy.write_text("process: [unclosed")
        refused = _wait_for(lines, "refused:")
        assert "p.yaml: line 1 column 19: not valid YAML" in refused
        assert refused.endswith("; generation 1 stays in force")
        containers.write_text("{")
        assert "c.json: line 1 column 2: not valid JSON" in _wait_for(lines, "refused:")
        assert run_tiny() == 0
        assert last_doc()["cloud_defend"]["bundle_generation"] == 1  # type: ignore[index]
        containers.write_text(json.dumps({"/nonexistent": {}}))
        assert "not a cgroup v2 directory" in _wait_for(lines, "refused:")

        containers.write_text(json.dumps({str(cgroup.path): {}}))
        policy.write_text(tiny_policy(binary, ["alert", "block"]))
        _wait_for(lines, "applied generation 2")
        assert run_tiny() == -9
        doc = last_doc()
        assert doc["cloud_defend"]["bundle_generation"] == 2  # type: ignore[index]
        assert doc["cloud_defend"]["outcome"] == "killed"  # type: ignore[index]
        assert '"dropped": 0' in _wait_for(lines, "stats")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    tail = []
    while not lines.empty():
        tail.append(lines.get())
    assert any('"kills": 1' in line and '"written": 6' in line for line in tail), (
        tail
    )  # 3 execs, 3 ends


def test_cli_refuses_bad_containers_at_start(workdir: Path, _built: None) -> None:
    (workdir / "p.yaml").write_text("process: {selectors: [{name: a, operation: [exec]}],"
                                    " responses: [{match: [a], actions: [log]}]}")  # fmt: skip
    (workdir / "c.json").write_text(json.dumps({"/tmp": {}}))
    res = subprocess.run(
        [sys.executable, "-m", "stockade.sensor.cli", "--standalone", "--policy",
         str(workdir / "p.yaml"), "--containers", str(workdir / "c.json"), "--output",
         f"jsonl:{workdir}/out"],
        capture_output=True, text=True, check=False, env={**os.environ},
    )  # fmt: skip
    assert res.returncode == 1
    assert "c.json: /tmp: not a cgroup v2 directory; no policy stays in force" in res.stderr
