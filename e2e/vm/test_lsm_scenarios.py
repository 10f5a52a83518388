"""The drift, audit and scope scenarios in lsm mode, inside the test VM (BPF LSM enabled):
`stockade sensor --standalone` as a process, the seed's default policy plus the scenario's
manifests in its policy file (hot-reloaded), containers as cgroups listed in its containers
file. A block is an EPERM before the operation: the file is never written.

Run by tests/kernel/test_lsm_vm.py in its lsm boots (e2e/conftest.py keeps this directory out
of the host's collection)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stockade.sensor.probe import bpf_lsm_active
from tests.kernel.conftest import CGROUP2, Cgroup
from tests.operator.conftest import STOCKADE, wait_for

from ..conftest import REPO, log
from ..manifests import cluster_policy, container_policy, no_new_executables

pytestmark = pytest.mark.skipif(
    not bpf_lsm_active(), reason="bpf is not in this kernel's active LSM list"
)

EPERM_EXIT = 1  # cp's status when the create fails
DEFAULT = (REPO / "examples" / "policies" / "default.yaml").read_text()
# name → (namespace, pod labels, namespace labels)
CONTAINERS = {
    "web": ("shop", {"app": "web"}, {}),
    "db": ("shop", {"app": "db"}, {}),
    "api-in": ("team-a", {"app": "api"}, {"team": "a"}),
    "api-out": ("team-b", {"app": "api"}, {"team": "b"}),
}


class StandaloneNode:
    """A node of listed cgroups under `stockade sensor --standalone`, its policy file
    rewritten for each scenario."""

    def __init__(self, root: Path, cgroups: Path) -> None:
        self.root = root
        self.policy = root / "policy.yaml"
        self.output = root / "events.jsonl"
        self.stderr = root / "sensor.log"
        self.drift = root / "drift"
        self.drift.mkdir()
        self.cgroups: dict[str, Cgroup] = {}
        listed: dict[str, Any] = {}
        for name, (namespace, labels, namespace_labels) in CONTAINERS.items():
            (cgroups / name).mkdir()
            self.cgroups[name] = Cgroup(cgroups / name)
            listed[str(cgroups / name)] = {
                "container": {"imageName": "busybox", "imageTag": "1.36"},
                "kubernetes": {"namespace": namespace, "podName": f"{name}-1",
                               "podLabels": labels, "namespaceLabels": namespace_labels},
            }  # fmt: skip
        (root / "containers.json").write_text(json.dumps(listed))
        self.policy.write_text(DEFAULT)
        self.generation = 1
        self.written = 0
        t0 = time.monotonic()
        with self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [str(STOCKADE), "sensor", "--standalone", "--policy", str(self.policy),
                 "--containers", str(root / "containers.json"),
                 "--output", f"jsonl:{self.output}", "--state-dir", str(root / "state")],
                stderr=err,
            )  # fmt: skip
        self.wait_generation(timeout=180)
        log.info(f"standalone sensor up in {time.monotonic() - t0:.1f} s: {self.said('mode ')}")

    def said(self, prefix: str) -> str:
        lines = self.stderr.read_text().splitlines()
        return next((x for x in reversed(lines) if x.startswith(f"stockade sensor: {prefix}")), "")

    def wait_generation(self, timeout: float = 60) -> None:
        def applied() -> re.Match[str] | None:
            assert self.proc.poll() is None, self.stderr.read_text()
            return re.search(rf"applied generation {self.generation}\b", self.stderr.read_text())

        wait_for(f"generation {self.generation} in force", applied, timeout)

    def apply(self, *manifests: dict[str, Any]) -> None:
        """The default policy and `manifests` in force (the file rewritten, hot-reloaded)."""
        docs = [DEFAULT, *(json.dumps(m) for m in manifests)]
        self.policy.write_text("\n---\n".join(docs))
        self.generation += 1
        t0 = time.monotonic()
        self.wait_generation()
        took = time.monotonic() - t0
        log.info(f"  policy file reloaded: generation {self.generation} in force in {took:.1f} s")

    def write_executable(self, container: str, name: str) -> tuple[int, Path, str]:
        """`cp /bin/true DRIFT/name` in the container: (exit status, path, stderr)."""
        path = self.drift / name
        proc = subprocess.run(
            ["cp", "/bin/true", str(path)], preexec_fn=self.cgroups[container].join(),
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        said = proc.stderr.strip()
        log.info(f"  {container}: cp /bin/true {path.name}: exit {proc.returncode} {said}")
        return proc.returncode, path, proc.stderr

    def alert(self, path: Path) -> dict[str, Any]:
        """The alert document for a write of `path`."""

        def find() -> dict[str, Any] | None:
            for line in self.output.read_text().splitlines():
                doc = json.loads(line)
                if doc.get("file", {}).get("path") == str(path) and doc["event"]["kind"] == "alert":
                    return dict(doc)
            return None

        return wait_for(f"the alert for {path.name}", find, timeout=30)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def node() -> Iterator[StandaloneNode]:
    root = Path(tempfile.mkdtemp(prefix="stk-e2e-", dir="/var/tmp"))
    cgroups = Path(tempfile.mkdtemp(prefix="stk-e2e-", dir=CGROUP2))
    made = StandaloneNode(root, cgroups)
    try:
        yield made
    finally:
        made.close()
        for cgroup in made.cgroups.values():
            cgroup.path.rmdir()
        cgroups.rmdir()
        shutil.rmtree(root, ignore_errors=True)


def test_drift_alerted_by_default_then_denied_with_eperm(node: StandaloneNode) -> None:
    assert "mode lsm" in node.said("mode ")
    log.info("the default policy only: a new executable in web is written and alerted")
    code, path, _ = node.write_executable("web", "first")
    assert code == 0 and path.exists()
    alert = node.alert(path)
    assert alert["cloud_defend"]["matched_selectors"] == ["executableChanges"]
    assert alert["cloud_defend"]["outcome"] == "allowed"

    log.info("a ContainerPolicy blocking new executables for app=web")
    node.apply(container_policy("drift-prevention", "shop", {"app": "web"},
                                **no_new_executables(node.drift)))  # fmt: skip
    code, path, err = node.write_executable("web", "second")
    assert code == EPERM_EXIT and "Operation not permitted" in err
    assert not path.exists()  # denied before it happened
    alert = node.alert(path)
    cd = alert["cloud_defend"]
    log.info(f"  alert: event.type {alert['event']['type']}, outcome {cd['outcome']}")
    assert "denied" in alert["event"]["type"]
    assert alert["cloud_defend"]["outcome"] == "denied"
    assert alert["cloud_defend"]["enforcement_mode"] == "lsm"
    assert "block" in alert["cloud_defend"]["actions"]


def test_audit_mode_writes_and_says_it_would_have_blocked(node: StandaloneNode) -> None:
    node.apply(container_policy("drift-audit", "shop", {"app": "web"}, mode="audit",
                                **no_new_executables(node.drift)))  # fmt: skip
    code, path, _ = node.write_executable("web", "audited")
    assert code == 0 and path.exists()
    cd = node.alert(path)["cloud_defend"]
    log.info(f"  alert: outcome {cd['outcome']}, would_block {cd['would_block']}")
    assert cd["outcome"] == "allowed" and cd["would_block"] is True


def test_scope_pod_and_namespace_selectors(node: StandaloneNode) -> None:
    node.apply(
        container_policy("web-only", "shop", {"app": "web"}, **no_new_executables(node.drift)),
        cluster_policy("team-a-drift", {"team": "a"}, **no_new_executables(node.drift)),
    )
    expected = {"web": EPERM_EXIT, "db": 0, "api-in": EPERM_EXIT, "api-out": 0}
    got = {name: node.write_executable(name, f"scope-{name}")[0] for name in expected}
    assert got == expected
    assert not os.path.exists(node.drift / "scope-api-in")
