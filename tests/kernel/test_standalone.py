"""Scenarios through the standalone path: policy YAML → bundle → maps → real processes → JSONL.

Every scenario's documents must be exactly what `PartTables.decide` predicts for the
operations performed, in order (process ends aside: they are not policy decisions).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.sensor.elastic.config import ElasticConfig
from stockade.sensor.elastic.writer import ElasticOutput
from stockade.sensor.enforcer import drops
from stockade.sensor.kernel import KillSensor
from stockade.sensor.standalone import Standalone
from stockade.sensor.state import StateDir

from .conftest import Cgroup
from .scenario import (
    PY,
    Harness,
    Op,
    driver_argv,
    kernel_operations,
    outcome,
    predict,
    regular_volume,
)

pytestmark = pytest.mark.kernel

WEB = {
    "container": {"imageFullName": "docker.io/library/nginx", "imageName": "nginx"},
    "kubernetes": {"namespace": "shop", "podName": "web-1", "podLabels": {"app": "web"}},
}


def policy(w: Path) -> str:
    return textwrap.dedent(
        f"""
        process:
          selectors:
            - name: tinyExec
              operation: [exec]
              processExecutable: [{w}/bin/*]
            - name: driverFork
              operation: [fork]
              processName: [{Path(PY).name[:15]}]
          responses:
            - match: [tinyExec, driverFork]
              actions: [log]
        file:
          selectors:
            - name: anyBelow
              targetFilePath: [{w}/**]
            - name: executables
              operation: [createExecutable, modifyExecutable]
            - name: subCreateDelete
              operation: [createFile, deleteFile]
              targetFilePath: [{w}/sub/*]
          responses:
            - match: [anyBelow]
              exclude: [subCreateDelete]
              actions: [log]
            - match: [executables]
              actions: [alert]
            - match: [subCreateDelete]
              actions: [alert]
        """
    )


def setup_tree(w: Path, tiny: Path) -> dict[str, int]:
    """bin/tiny and sub/; returns the file modes the prediction starts from."""
    (w / "bin").mkdir(parents=True)
    (w / "sub").mkdir()
    shutil.copy(tiny, w / "bin" / "tiny")
    return {f"{w}/bin/tiny": 0o755}


def every_operation(w: Path) -> list[Op]:
    """Each hook with absolute and relative paths."""
    return [
        ["chdir", str(w)],
        ["exec", f"{w}/bin/tiny"],
        ["exec", "bin/tiny"],
        ["create", f"{w}/a.txt", 0o644],
        ["create", "rel.sh", 0o755],
        ["modify", "a.txt"],
        ["modify", f"{w}/rel.sh"],
        ["ftruncate", "a.txt"],
        ["chmod", "a.txt", 0o755],
        ["chmod", f"{w}/rel.sh", 0o644],
        ["rename", "a.txt", "sub/b.txt"],
        ["link", f"{w}/sub/b.txt", "sub/c.txt"],
        ["truncate", "sub/c.txt"],
        ["truncate", f"{w}/rel.sh"],
        ["delete", f"{w}/sub/b.txt"],
        ["delete", "sub/c.txt"],
        ["delete", "rel.sh"],
    ]


def test_every_operation_as_predicted(
    harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    applied = harness.apply(policy(workdir), {cgroup: WEB})
    modes = setup_tree(workdir, tiny)
    ops = every_operation(workdir)
    res, docs = harness.run(driver_argv(ops), cgroup)
    assert res.returncode == 0, res.stderr
    expected = predict(applied, cgroup.id, kernel_operations(ops, "/", modes, regular_volume))
    assert [outcome(d) for d in docs] == expected
    assert len(expected) == 23  # not vacuous: forks, execs and every file hook
    for d in docs:
        assert d["container"] == {"image": {"name": "nginx"}}  # Elastic's short name
        assert d["orchestrator"]["resource"] == {
            "type": "pod",
            "name": "web-1",
            "label": ["app:web"],
        }
        assert d["cloud_defend"]["cgroup_id"] == cgroup.id
        assert d["cloud_defend"]["bundle_generation"] == harness.sa.generation  # type: ignore[union-attr]
        assert d["cloud_defend"]["enforcement_mode"] == "kill"
        assert d["event"]["kind"] == (
            "alert" if "alert" in d["cloud_defend"]["actions"] else "event"
        )
    execs = [d for d in docs if d["event"]["action"] == "exec"]
    assert [e["process"]["args"] for e in execs] == [[f"{workdir}/bin/tiny"], ["bin/tiny"]]
    assert all(e["process"]["working_directory"] == str(workdir) for e in execs)
    forks = [d for d in docs if d["event"]["action"] == "fork"]
    assert all(f["process"]["parent"]["pid"] == execs[0]["process"]["parent"]["pid"] for f in forks)
    actions = [d["event"]["action"] for d in docs if d["event"]["category"] == ["file"]]
    assert actions == [
        "creation", "creation", "open", "open", "open", "modification", "modification",
        "modification", "rename", "rename", "rename", "link", "link", "link", "modification",
        "modification", "deletion", "deletion", "deletion",
    ]  # fmt: skip


def test_descendant_cgroups_are_covered_outside_is_not(
    harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    applied = harness.apply(policy(workdir), {cgroup: WEB})
    child = cgroup.path / "nested" / "deeper"
    child.mkdir(parents=True)
    for name, cg in (("in", Cgroup(child)), ("out", None)):
        w = workdir / name
        modes = setup_tree(w, tiny)
        ops = every_operation(w)
        res, docs = harness.run(driver_argv(ops), cg)
        assert res.returncode == 0, res.stderr
        if cg is None:
            assert docs == []
        else:
            expected = predict(
                applied, cgroup.id, kernel_operations(ops, "/", modes, regular_volume)
            )
            assert [outcome(d) for d in docs] == expected and expected
            assert {d["cloud_defend"]["cgroup_id"] for d in docs} == {cgroup.id}


def test_mount_namespace_volumes(harness: Harness, cgroup: Cgroup, workdir: Path) -> None:
    w = workdir
    for d in ("srcdir", "vol"):
        (w / d).mkdir()
    for f in ("srcfile", "single"):
        (w / f).write_text("")
    applied = harness.apply(
        textwrap.dedent(
            f"""
            file:
              selectors:
                - name: every
                  targetFilePath: [{w}/**]
                - name: notInMounts
                  targetFilePath: [{w}/**]
                  ignoreVolumeMounts: true
                - name: notInFileMounts
                  targetFilePath: [{w}/**]
                  ignoreVolumeFiles: true
              responses:
                - match: [every, notInMounts, notInFileMounts]
                  actions: [log]
            """
        ),
        {cgroup: {}},
    )
    ops: list[Op] = [
        ["create", f"{w}/vol/new", 0o644],
        ["modify", f"{w}/single"],
        ["ftruncate", f"{w}/single"],
        ["create", f"{w}/plain", 0o644],
        ["chdir", f"{w}/vol"],
        ["create", "rel", 0o755],
        ["chmod", "rel", 0o644],
        ["chmod", f"{w}/vol/rel", 0o600],  # absolute string path: see docs/kernel.md
        ["rename", "rel", "rel2"],
        ["delete", "rel2"],
        ["truncate", f"{w}/single"],
    ]

    def volume_of(path: str) -> str:
        if path == f"{w}/vol" or path.startswith(f"{w}/vol/"):
            return "mount"
        return "file" if path == f"{w}/single" else "none"

    script = (
        f"mount --make-rprivate / && mount --bind {w}/srcdir {w}/vol && "
        f'mount --bind {w}/srcfile {w}/single && exec "$@"'
    )
    res, docs = harness.run(["unshare", "-m", "sh", "-c", script, "sh", *driver_argv(ops)], cgroup)
    assert res.returncode == 0, res.stderr
    modes = {f"{w}/single": 0o644}
    expected = predict(applied, cgroup.id, kernel_operations(ops, "/", modes, volume_of))
    assert [outcome(d) for d in docs] == expected
    assert [d["cloud_defend"]["volume"] for d in docs] == [
        "mount", "file", "file", "file", "none", "mount", "mount", "none", "mount", "mount",
        "mount", "mount", "none",
    ]  # fmt: skip
    assert (w / "srcdir" / "new").exists()  # the operations happened where the mounts say


BLOCKING: dict[str, Any] = {
    "process": {
        "selectors": [{"name": "echo", "operation": ["exec"], "processName": ["echo"]}],
        "responses": [{"match": ["echo"], "actions": ["alert", "block"]}],
    },
}

EVERY_EXEC: dict[str, Any] = {
    "process": {
        "selectors": [{"name": "every", "operation": ["fork", "exec"]}],
        "responses": [{"match": ["every"], "actions": ["log"]}],
    },
}


def test_blocked_exec_never_runs(harness: Harness, cgroup: Cgroup) -> None:
    harness.apply([BLOCKING], {cgroup: WEB})
    res, docs = harness.run(["/bin/sh", "-c", "/bin/echo MARKER-NEVER; echo after"], cgroup)
    assert res.stdout == "after\n"
    assert [outcome(d) for d in docs] == [
        ("process", "/usr/bin/echo", ("echo",), ("alert", "block"), False, "killed")
    ]
    assert docs[0]["event"]["kind"] == "alert"
    assert docs[0]["process"]["args"] == ["/bin/echo", "MARKER-NEVER"]


def test_blocked_file_operation_kills(harness: Harness, cgroup: Cgroup, workdir: Path) -> None:
    (workdir / "etc").mkdir()
    harness.apply(
        [
            {
                "file": {
                    "selectors": [
                        {"name": "etc", "operation": ["createFile"],
                         "targetFilePath": [f"{workdir}/etc/*"]},
                    ],
                    "responses": [{"match": ["etc"], "actions": ["alert", "block"]}],
                }
            }
        ],
        {cgroup: WEB},
    )  # fmt: skip
    ops: list[Op] = [["create", f"{workdir}/ok", 0o644], ["create", f"{workdir}/etc/x", 0o644],
                     ["create", f"{workdir}/after", 0o644]]  # fmt: skip
    res, docs = harness.run(driver_argv(ops), cgroup)
    assert res.returncode == -9
    assert res.stdout.count("\n") == 1  # the first operation completed, then the kill
    assert [outcome(d) for d in docs] == [
        ("file", f"{workdir}/etc/x", ("etc",), ("alert", "block"), False, "killed")
    ]
    assert not (workdir / "after").exists()
    assert (workdir / "etc" / "x").exists()  # kill mode: the operation itself has happened


def test_audit_mode_never_kills(harness: Harness, cgroup: Cgroup) -> None:
    manifest = {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": "audit-echo", "namespace": "shop", "uid": "u-1", "generation": 4},
        "spec": {"mode": "audit", **BLOCKING},
    }
    harness.apply([manifest], {cgroup: WEB})
    res, docs = harness.run(["/bin/sh", "-c", "/bin/echo SEEN"], cgroup)
    assert res.stdout == "SEEN\n"
    assert [outcome(d) for d in docs] == [
        ("process", "/usr/bin/echo", ("echo",), ("alert",), True, "allowed")
    ]
    cd = docs[0]["cloud_defend"]
    assert (cd["package_policy_id"], cd["package_policy_revision"]) == ("u-1", 4)


def test_scope_and_container_conditions(harness: Harness, cgroup: Cgroup, workdir: Path) -> None:
    (cgroup.path / "other").mkdir()
    other = Cgroup(cgroup.path / "other")
    manifest = {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": "web-only", "namespace": "shop"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "file": {
                "selectors": [{"name": "any", "targetFilePath": [f"{workdir}/**"],
                               "containerImageName": ["nginx"]}],
                "responses": [{"match": ["any"], "actions": ["log"]}],
            },
        },
    }  # fmt: skip
    db = {"container": {"imageName": "nginx"}, "kubernetes": {"namespace": "shop",
          "podName": "db-0", "podLabels": {"app": "db"}}}  # fmt: skip
    harness.apply([manifest], {cgroup: WEB, other: db})
    _, docs = harness.run(driver_argv([["create", f"{workdir}/web", 0o644]]), cgroup)
    assert [d["file"]["path"] for d in docs] == [f"{workdir}/web"]
    _, docs = harness.run(driver_argv([["create", f"{workdir}/db", 0o644]]), other)
    assert docs == []  # listed itself (the deepest listed cgroup decides), out of scope


def test_outside_processes_unaffected_by_blocks(harness: Harness, cgroup: Cgroup) -> None:
    harness.apply([BLOCKING], {cgroup: WEB})
    res, docs = harness.run(["/bin/sh", "-c", "/bin/echo OUTSIDE"], None)
    assert (res.stdout, docs) == ("OUTSIDE\n", [])
    assert subprocess.run(["/bin/echo"], capture_output=True, check=False).returncode == 0


def test_cgroup_records_are_counted_not_written(harness: Harness, cgroup: Cgroup) -> None:
    """A container's cgroup made and removed while the sensor runs: no document, a count."""
    harness.apply([BLOCKING], {cgroup: WEB})
    harness.docs()
    assert harness.sa is not None
    before = harness.sa.stats()
    (cgroup.path / "c").mkdir()
    (cgroup.path / "c").rmdir()
    assert harness.docs() == []
    after = harness.sa.stats()
    assert after["cgroup_records"] - before["cgroup_records"] >= 2
    assert (after["written"], after["undecodable"]) == (before["written"], before["undecodable"])


def test_the_process_that_enters_a_mount_namespace_is_its_descendants_entry_leader(
    harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    harness.apply(
        textwrap.dedent(
            f"""
            process:
              selectors:
                - name: every
                  operation: [fork, exec]
              responses:
                - match: [every]
                  actions: [log]
            file:
              selectors:
                - name: made
                  operation: [createFile]
                  targetFilePath: [{workdir}/made]
              responses:
                - match: [made]
                  actions: [log]
            """
        ),
        {cgroup: WEB},
    )
    setup_tree(workdir, tiny)
    ops: list[Op] = [["exec", f"{workdir}/bin/tiny"], ["create", f"{workdir}/made", 0o644]]
    # sh (its parent, pytest, never seen) forks; the child execs unshare, which enters a new
    # mount namespace and execs the driver: the entry leader of the driver's children
    script = 'unshare -m "$@"; exit $?'
    res, docs = harness.run(["/bin/sh", "-c", script, "sh", *driver_argv(ops)], cgroup)
    assert res.returncode == 0, res.stderr
    sh, unshare = (os.path.realpath(shutil.which(p) or p) for p in ("sh", "unshare"))
    steps = [(d["event"]["action"], d["process"].get("executable")) for d in docs]
    assert steps == [
        ("exec", sh), ("fork", sh), ("exec", unshare),
        ("exec", PY), ("fork", PY), ("exec", f"{workdir}/bin/tiny"), ("creation", PY),
    ]  # fmt: skip
    before = [d for d in docs if d["process"].get("executable") != PY][:3]
    assert all("entry_leader" not in d["process"] for d in before), before  # never a guess
    driver = docs[3]["process"]
    leader = driver["entry_leader"]
    assert leader["pid"] == driver["pid"] and leader["entity_id"] == driver["entity_id"]
    assert leader["executable"] == PY and leader["args"] == [PY, *driver_argv(ops)[1:]]
    assert leader["same_as_process"] is True and leader["entry_meta"] == {"type": "container"}
    assert leader["start"] == driver["start"] and leader["interactive"] is False
    for d in docs[4:]:  # the fork, the exec in the same namespace, the driver's file event
        assert d["process"]["entry_leader"]["entity_id"] == driver["entity_id"], d
        assert d["process"]["entry_leader"]["same_as_process"] is (d is docs[6])


def test_documents_the_output_drops_count_in_the_sensors_dropped(
    sensor: KillSensor, cgroup: Cgroup, workdir: Path
) -> None:
    """Elasticsearch down and a spool too small for a burst: what the output drops is in
    `dropped` (the NodePolicyReport's droppedEvents), by reason in `drops`."""
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    (workdir / "policy.yaml").write_text(yaml.safe_dump(EVERY_EXEC))
    (workdir / "containers.json").write_text(json.dumps({str(cgroup.path): {}}))
    out = ElasticOutput(ElasticConfig(url, request_timeout=1.0), workdir / "spool",
                        spool_max_bytes=8 << 10)  # fmt: skip
    sa = Standalone(sensor, workdir / "policy.yaml", workdir / "containers.json", out, "kill",
                    state=StateDir(workdir / "state"), log=io.StringIO())  # fmt: skip
    try:
        assert sa.apply()
        subprocess.run(["/bin/sh", "-c", "for i in $(seq 40); do /bin/true; done"],
                       preexec_fn=cgroup.join(), check=True)  # fmt: skip
        while sa.pump(150):
            pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every document spooled or dropped
            stats = sa.stats()
            if stats["es_spooled"] + stats["es_dropped_logs"] == stats["written"]:
                break
            time.sleep(0.1)
    finally:
        sa.close()
        out.close()
    assert stats["es_dropped_logs"] > 0, stats
    assert stats["dropped"] == sum(drops(stats).values()) >= stats["es_dropped_logs"]
