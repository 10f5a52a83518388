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
# a blocked exec as its record and the shell's `$?` show it: (outcome, $?, hook)
BLOCKED_EXEC = {
    "kill": ("killed", 137, "tracepoint__sched_process_exec"),  # SIGKILL before it runs
    "lsm": ("denied", 126, "lsm__bprm_check_security"),  # execve fails with EPERM
    "fmodret": ("denied", 126, "fmod_ret__security_bprm_check"),
}
ALLOWED_EXEC = ("allowed", 0, "tracepoint__sched_process_exec")


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


def flips_under_an_exec_loop(
    harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path, execs: int
) -> None:
    """`execs` runs of a static binary while bundles flip between "block it" and "log it":
    every exec has exactly one record, and the record's generation says what happened (actions,
    outcome, hook, the loop's `$?`). One body for both modes: kill mode here, lsm mode in the
    test VM (tests/vm/test_lsm_shared.py, fewer execs)."""
    binary = workdir / "tiny"
    binary.write_bytes(tiny.read_bytes())
    binary.chmod(0o755)
    block, allow = tiny_policy(binary, ["alert", "block"]), tiny_policy(binary, ["log"])
    blocked = (["alert", "block"], *BLOCKED_EXEC[harness.mode])
    allowed = (["log"], *ALLOWED_EXEC)
    blocking: set[int] = set()
    # Flip far more often than the loop's execs take; its records (~2 MB) wait in the ring.
    grace, harness.sensor.grace_s = harness.sensor.grace_s, 0.02
    try:
        harness.apply(block, {cgroup: {}})
        sa = harness.sa
        assert sa is not None
        blocking.add(sa.generation)
        script = f"i=0; while [ $i -lt {execs} ]; do {binary}; echo $?; i=$((i+1)); done"
        loop = subprocess.Popen(
            ["/bin/sh", "-c", script], preexec_fn=cgroup.join(), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,  # lsm: sh's "Permission denied" per exec
        )  # fmt: skip
        flips = 0
        while loop.poll() is None:
            flips += 1
            harness.apply(allow if flips % 2 else block, {cgroup: {}})  # waits out the grace
            if flips % 2 == 0:
                blocking.add(sa.generation)
    finally:
        harness.sensor.grace_s = grace
    statuses = [int(s) for s in (loop.stdout.read() if loop.stdout else "").split()]
    docs = [d for d in harness.docs() if d["event"]["action"] == "exec"]
    assert len(statuses) == execs and len(docs) == execs  # every exec decided, none lost
    assert flips >= 5
    generations = [d["cloud_defend"]["bundle_generation"] for d in docs]
    wrong = []
    for i, (status, doc) in enumerate(zip(statuses, docs, strict=True)):
        cd = doc["cloud_defend"]
        got = (cd["actions"], cd["outcome"], status, cd["hook_point"])
        if got != (blocked if generations[i] in blocking else allowed):
            wrong.append((i, generations[i - 1] if i else None, generations[i], *got))
    assert not wrong, (
        f"{len(wrong)} of {execs} execs disagree with their record's generation ({flips} flips; "
        f"blocking generations {sorted(blocking)}): (exec, previous exec's generation, "
        f"generation, actions, outcome, $?, hook) {wrong[:20]}"
    )
    assert len(set(generations)) >= 3  # the loop really ran across flips
    assert sa.stats()["dropped"] == 0


def test_flips_under_an_exec_loop(
    harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    flips_under_an_exec_loop(harness, cgroup, workdir, tiny, EXECS)


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
         "--containers", str(containers), "--output", f"jsonl:{out}", "--stats-interval", "1",
         "--state-dir", str(workdir / "state")],
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
        assert (
            "p.yaml: not valid YAML: did not find expected ',' or ']' (line 1, column 19)"
            in refused
        )
        assert refused.endswith("; generation 1 stays in force")
        containers.write_text("{")
        assert "c.json: not valid JSON: did not find expected node content (line 1, column 2)" in (
            _wait_for(lines, "refused:")
        )
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
         f"jsonl:{workdir}/out", "--state-dir", str(workdir / "state")],
        capture_output=True, text=True, check=False, env={**os.environ},
    )  # fmt: skip
    assert res.returncode == 1
    assert "c.json: '/tmp': not a cgroup v2 directory; no policy stays in force" in res.stderr
