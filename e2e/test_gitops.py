"""GitOps: a directory of manifests applied again changes nothing; a policy deleted from it
leaves the node's bundle and stops being enforced."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Stack, Story, run
from .manifests import container_policy, exec_of, no_new_executables
from .test_drift import Writer

pytestmark = pytest.mark.kernel

WEB = {"app": "web"}


def test_reapplied_manifests_change_nothing_and_a_deleted_policy_stops(
    stack: Stack, namespaces: Callable[..., str], story: Story, tmp_path: Path, tool: Path
) -> None:
    ns = namespaces("gitops")
    web = stack.start_pod(ns, "web-1", WEB)
    writer = Writer(tmp_path / "drift")
    repo = tmp_path / "policies"
    repo.mkdir()
    manifests = {
        "drift": container_policy("drift", ns, WEB, **no_new_executables(writer.directory)),
        "no-tool": container_policy("no-tool", ns, WEB, **exec_of(tool)),
    }
    for name, manifest in manifests.items():
        (repo / f"{name}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    story(f"kubectl apply -f {repo.name}/ (drift.yaml, no-tool.yaml) for {ns}")
    story("  " + stack.kubectl("apply", "-f", str(repo)).stdout.strip().replace("\n", "; "))

    def applied(name: str) -> bool:
        r = stack.row(ns, name)
        return r["READY"] == "True" and r["NODES"] == "1/1"

    for name in manifests:
        story.wait(f"{name}: READY True, NODES 1/1", functools.partial(applied, name))
    assert stack.blocked(writer.attempt(web)[0]) and stack.blocked(run(web, [str(tool)]))

    def observed() -> dict[str, Any]:
        found = stack.bundle()
        assert found is not None
        return {
            "generations": {n: stack.policy(ns, n)["metadata"]["generation"] for n in manifests},
            "bundle ConfigMap resourceVersion": found[1].metadata.resource_version,
        }

    before = observed()
    story(f"the same directory applied again; before: {before}")
    out = stack.kubectl("apply", "-f", str(repo)).stdout.strip()
    story("  " + out.replace("\n", "; "))
    assert out.count("unchanged") == 2
    time.sleep(2)  # the operator's debounce and a sensor report, had anything changed
    after = observed()
    story(f"  2 s later: {after}")
    assert after == before

    story("kubectl delete -f no-tool.yaml")
    stack.kubectl("delete", "-f", str(repo / "no-tool.yaml"))

    def without_no_tool() -> set[str] | None:
        found = stack.bundle()
        return found[0] if found and not any("/no-tool@" in p for p in found[0]) else None

    held = story.wait("no-tool out of the node's bundle", without_no_tool)
    story(f"  the bundle holds {sorted(held)}")
    story.wait(f"{tool.name} runs again", lambda: run(web, [str(tool)]) == 0)
    assert stack.blocked(writer.attempt(web)[0])  # the other policy stays in force
