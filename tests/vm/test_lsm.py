"""lsm and fmodret modes, for real: BPF LSM programs, or fmod_ret programs on the security_*
functions that call those hooks, in the test VM's kernel (run by `e2e/vm/run`).

A BLOCK is an EPERM before the operation: the exec fails in the caller (the program
never runs, nobody is killed), the file is unchanged, the record says `denied`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from stockade.sensor.abi import Hook
from stockade.sensor.probe import Mode, bpf_lsm_active, probe_mode

from ..kernel.conftest import Cgroup
from ..kernel.scenario import PY, Harness, driver_argv, kernel_operations, outcome, predict
from ..kernel.scenario import regular_volume as _regular_volume
from ..kernel.test_standalone import BLOCKING, WEB, every_operation, policy, setup_tree

pytestmark = pytest.mark.vm

# the scripts' prelude: attempt() runs one operation and prints [name, errno or 0]; never stops
ATTEMPT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    def attempt(name, fn):
        try:
            fn()
            err = 0
        except OSError as exc:
            err = exc.errno
        print(json.dumps([name, err]), flush=True)
    """
)

# tries each operation, prints [name, errno or 0] per line
TRY = ATTEMPT + textwrap.dedent(
    """
    os.umask(0)
    w = sys.argv[1]
    e = w + "/etc"
    W, C, X = os.O_WRONLY, os.O_CREAT, os.O_EXCL
    attempt("create", lambda: os.close(os.open(e + "/new", W | C | X, 0o644)))
    attempt("open_trunc", lambda: os.close(os.open(e + "/existing", os.O_WRONLY | os.O_TRUNC)))
    attempt("open_write", lambda: os.close(os.open(e + "/existing", os.O_RDWR)))
    attempt("chmod", lambda: os.chmod(e + "/existing", 0o755))
    attempt("truncate", lambda: os.truncate(e + "/existing", 0))
    attempt("link_in", lambda: os.link(w + "/outside", e + "/linked"))
    attempt("rename_in", lambda: os.rename(w + "/outside", e + "/renamed"))
    attempt("mknod", lambda: os.mknod(e + "/node", 0o644 | 0o100000))
    attempt("read", lambda: open(e + "/existing").read())
    attempt("create_outside", lambda: os.close(os.open(w + "/ok", W | C, 0o644)))
    attempt("unlink", lambda: os.unlink(e + "/existing"))
    """
)
DENIED = ["create", "open_trunc", "open_write", "chmod", "truncate", "rename_in", "link_in",
          "mknod", "unlink"]  # fmt: skip
EPERM = 1


def file_block_policy(w: Path, mode: str = "enforce") -> dict[str, Any]:
    return {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": "etc-guard", "namespace": "shop"},
        "spec": {
            "mode": mode,
            "file": {
                "selectors": [{"name": "etc", "targetFilePath": [f"{w}/etc/**"],
                               "operation": ["createFile", "modifyFile", "deleteFile"]}],
                "responses": [{"match": ["etc"], "actions": ["alert", "block"]}],
            },
        },
    }  # fmt: skip


def tree(w: Path) -> None:
    (w / "etc").mkdir()
    (w / "etc" / "existing").write_text("data\n")
    os.chmod(w / "etc" / "existing", 0o644)
    (w / "outside").write_text("o\n")


def attempt(
    harness: Harness, w: Path, cg: Cgroup | None
) -> tuple[subprocess.CompletedProcess[str], dict[str, int], list[dict[str, Any]]]:
    res, docs = harness.run([PY, "-S", "-B", "-c", TRY, str(w)], cg)
    results = dict(json.loads(line) for line in res.stdout.splitlines())
    return res, results, docs


def hook_point(harness: Harness, lsm_hook: str) -> str:
    """A record's hook_point for an LSM hook in the harness's mode (fmodret: the security_*
    function that calls the hook)."""
    hook = next(h for h in Hook if h.name.startswith("LSM_") and h.point == lsm_hook)
    if harness.mode == "fmodret":
        hook = Hook[hook.name.replace("LSM_", "FMODRET_", 1)]
    return hook.hook_point


def test_probe_picks_lsm_else_fmodret() -> None:
    """lsm where bpf is in the active LSM list; booted without it (`e2e/vm/run --lsm`),
    fmodret, saying why lsm was refused."""
    result = probe_mode()
    if bpf_lsm_active():
        assert result.mode == Mode.LSM, result.reason
        assert result.lsm_listed and result.lsm_error is None
    else:
        assert result.mode == Mode.FMODRET, result.reason
        assert not result.lsm_listed and result.fmodret_error is None
        assert result.reason.startswith(
            "BPF LSM unavailable (bpf not in /sys/kernel/security/lsm); an fmod_ret program"
        ), result.reason


def test_blocked_exec_is_denied_not_killed(harness: Harness, cgroup: Cgroup) -> None:
    harness.apply([BLOCKING], {cgroup: WEB})
    script = (
        "import os\n"
        "try:\n    os.execv('/bin/echo', ['/bin/echo', 'MARKER-NEVER'])\n"
        "except OSError as e:\n    print('exec failed', e.errno)\n"
    )
    res, docs = harness.run([PY, "-S", "-B", "-c", script], cgroup)
    assert (res.returncode, res.stdout) == (0, f"exec failed {EPERM}\n"), [
        (d["cloud_defend"]["hook_point"], d["cloud_defend"]["outcome"], d["process"]["name"])
        for d in docs
    ]  # alive, EPERM
    assert "MARKER-NEVER" not in res.stdout
    assert [outcome(d) for d in docs] == [
        ("process", "/usr/bin/echo", ("echo",), ("alert", "block"), False, "denied")
    ]
    d = docs[0]
    assert d["cloud_defend"]["hook_point"] == hook_point(harness, "bprm_check_security")
    assert d["cloud_defend"]["enforcement_mode"] == harness.mode
    assert d["event"]["action"] == "exec" and "denied" in d["event"]["type"]
    assert d["process"]["name"] == "echo"
    # the shell sees the error too, and goes on
    res, docs = harness.run(["/bin/sh", "-c", "/bin/echo MARKER-NEVER; echo rc=$?"], cgroup)
    assert (res.returncode, res.stdout) == (0, "rc=126\n")
    assert [outcome(d)[-1] for d in docs] == ["denied"]


def test_blocked_fork_is_denied_not_killed(harness: Harness, cgroup: Cgroup) -> None:
    """fork fails with EPERM in the caller, which goes on and can fork again once the block
    is gone (fmodret: security_task_alloc skipped, the child freed without its LSM blob)."""
    name = os.path.basename(PY)[:15]
    forks = {"process": {
        "selectors": [{"name": "forks", "operation": ["fork"], "processName": [name]}],
        "responses": [{"match": ["forks"], "actions": ["alert", "block"]}],
    }}  # fmt: skip
    script = (
        "import os\n"
        "try:\n    pid = os.fork()\nexcept OSError as e:\n    print('fork failed', e.errno)\n"
        "else:\n    os._exit(0) if pid == 0 else print('forked', os.waitpid(pid, 0)[1])\n"
    )
    harness.apply([forks], {cgroup: WEB})
    res, docs = harness.run([PY, "-S", "-B", "-c", script], cgroup)
    assert (res.returncode, res.stdout) == (0, f"fork failed {EPERM}\n"), res.stderr
    assert [outcome(d) for d in docs] == [
        ("process", PY, ("forks",), ("alert", "block"), False, "denied")
    ]
    assert docs[0]["cloud_defend"]["hook_point"] == hook_point(harness, "task_alloc")
    assert docs[0]["event"]["action"] == "fork"
    harness.apply([BLOCKING], {cgroup: WEB})  # forks allowed again
    res, docs = harness.run([PY, "-S", "-B", "-c", script], cgroup)
    assert (res.returncode, res.stdout, docs) == (0, "forked 0\n", [])


def test_blocked_file_operations_are_denied(
    harness: Harness, cgroup: Cgroup, workdir: Path
) -> None:
    tree(workdir)
    harness.apply([file_block_policy(workdir)], {cgroup: WEB})
    res, results, docs = attempt(harness, workdir, cgroup)
    assert res.returncode == 0, res.stderr  # never killed
    assert {k: v for k, v in results.items() if k in DENIED} == {k: EPERM for k in DENIED}
    assert results["read"] == 0 and results["create_outside"] == 0
    # nothing happened to the files
    e = workdir / "etc"
    assert sorted(p.name for p in e.iterdir()) == ["existing"]
    assert (e / "existing").read_text() == "data\n"
    assert stat.S_IMODE((e / "existing").stat().st_mode) == 0o644
    assert (workdir / "outside").read_text() == "o\n"
    assert [(d["file"]["path"], d["cloud_defend"]["hook_point"]) for d in docs] == [
        (path, hook_point(harness, hook)) for path, hook in (
            (f"{e}/new", "path_mknod"),
            (f"{e}/existing", "file_open"),
            (f"{e}/existing", "file_open"),
            (f"{e}/existing", "path_chmod"),
            (f"{e}/existing", "path_truncate"),
            (f"{e}/linked", "path_link"),
            (f"{e}/renamed", "path_rename"),
            (f"{e}/node", "path_mknod"),
            (f"{e}/existing", "path_unlink"),
        )
    ]  # fmt: skip
    for d in docs:
        assert d["cloud_defend"]["outcome"] == "denied"
        assert d["cloud_defend"]["actions"] == ["alert", "block"]
        assert d["cloud_defend"]["matched_selectors"] == ["etc"]
        assert d["event"]["kind"] == "alert" and "denied" in d["event"]["type"]
    assert harness.sensor.stats()["denials"] >= len(DENIED)


def test_unlisted_processes_are_unaffected(harness: Harness, cgroup: Cgroup, workdir: Path) -> None:
    tree(workdir)
    harness.apply([file_block_policy(workdir), BLOCKING], {cgroup: WEB})
    res, results, docs = attempt(harness, workdir, None)
    assert res.returncode == 0, res.stderr
    assert results == {k: 0 for k in results} and len(results) == 11, results
    assert docs == []
    res, docs = harness.run(["/bin/sh", "-c", "/bin/echo OUTSIDE"], None)
    assert (res.stdout, docs) == ("OUTSIDE\n", [])


def test_audit_mode_never_denies(harness: Harness, cgroup: Cgroup, workdir: Path) -> None:
    tree(workdir)
    harness.apply([file_block_policy(workdir, mode="audit")], {cgroup: WEB})
    res, results, docs = attempt(harness, workdir, cgroup)
    assert res.returncode == 0, res.stderr
    assert results == {k: 0 for k in results}, results
    assert docs and all(
        (d["cloud_defend"]["outcome"], d["cloud_defend"]["would_block"]) == ("allowed", True)
        for d in docs
    )
    assert "block" not in {a for d in docs for a in d["cloud_defend"]["actions"]}


def test_every_operation_as_predicted(
    harness: Harness, cgroup: Cgroup, workdir: Path, tmp_path: Path
) -> None:
    """tests/kernel's scenario (log and alert, nothing blocked): the same documents as the
    table interpreter predicts, as in kill mode."""
    from ..kernel.scenario import build_tiny

    tiny = build_tiny(tmp_path)
    applied = harness.apply(policy(workdir), {cgroup: WEB})
    modes = setup_tree(workdir, tiny)
    ops = every_operation(workdir)
    res, docs = harness.run(driver_argv(ops), cgroup)
    assert res.returncode == 0, res.stderr
    seen = kernel_operations(ops, "/", modes, _regular_volume, harness.mode)
    assert [outcome(d) for d in docs] == predict(applied, cgroup.id, seen, harness.mode)
    assert all(d["cloud_defend"]["enforcement_mode"] == harness.mode for d in docs)
