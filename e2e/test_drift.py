"""Container drift: a new executable written in a running container — alerted by the default
policy, stopped by a ContainerPolicy applied with kubectl, allowed and reported by the same
policy in audit mode."""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import Pod, Stack, Story, run
from .manifests import container_policy, no_new_executables

pytestmark = pytest.mark.kernel

WEB = {"app": "web"}


class Writer:
    """Writes new executables (copies of `true`, by `cp`) into a directory from a container:
    a new name each time, so that every attempt is a createExecutable."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()
        self._n = itertools.count()

    def next_path(self) -> Path:
        return self.directory / f"new-{next(self._n)}"

    def attempt(self, pod: Pod) -> tuple[int, Path]:
        path = self.next_path()
        return run(pod, ["cp", "/bin/true", str(path)]), path


def write_manifest(tmp_path: Path, manifest: dict[str, object]) -> Path:
    path = tmp_path / f"{manifest['metadata']['name']}.yaml"  # type: ignore[index]
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def test_drift_alerted_by_default_then_blocked_by_a_policy(
    stack: Stack, namespaces: Callable[..., str], story: Story, tmp_path: Path
) -> None:
    ns = namespaces("drift")
    web = stack.start_pod(ns, "web-1", WEB)
    writer = Writer(tmp_path / "drift")
    story(f"pod {ns}/web-1 (app=web) on node {stack.node}; the default policy in force")

    story("the container writes a new executable")
    code, first = writer.attempt(web)
    assert code == 0 and first.exists()
    alert = story.wait(
        "its alert in logs-cloud_defend.alerts-default",
        lambda: stack.alerts(ns, file__path=str(first)),
    )[0]
    cd = alert["cloud_defend"]
    story(f"  alert: {alert['event']['action']} {alert['file']['path']}, selectors "
          f"{cd['matched_selectors']}, outcome {cd['outcome']}")  # fmt: skip
    assert alert["cloud_defend"]["matched_selectors"] == ["executableChanges"]
    assert alert["cloud_defend"]["outcome"] == "allowed"
    assert [p["kind"] for p in alert["cloud_defend"]["policies"]] == ["ClusterContainerPolicy"]
    assert alert["orchestrator"]["resource"]["name"] == "web-1"

    policy = container_policy("drift-prevention", ns, WEB, **no_new_executables(writer.directory))
    manifest = write_manifest(tmp_path, policy)
    story(f"kubectl apply -f {manifest.name}: block new executables under {writer.directory}")
    t0 = time.monotonic()
    out = stack.kubectl("apply", "-f", str(manifest)).stdout.strip()
    story(f"  {out}")
    attempts: list[tuple[int, Path]] = []

    def next_attempt_stopped() -> bool:
        attempts.append(writer.attempt(web))
        return stack.blocked(attempts[-1][0])

    story.wait("the next attempt stopped", next_attempt_stopped)
    story(f"  kubectl apply → first write stopped: {time.monotonic() - t0:.2f} s "
          f"({len(attempts)} attempts)")  # fmt: skip
    stopped = attempts[-1][1]

    denied = story.wait(
        "the block's alert in logs-cloud_defend.alerts-default",
        lambda: stack.alerts(ns, file__path=str(stopped)),
    )[0]
    cd = denied["cloud_defend"]
    story(f"  alert: event.type {denied['event']['type']}, outcome {cd['outcome']}, actions "
          f"{cd['actions']}, policies {[p['name'] for p in cd['policies']]}")  # fmt: skip
    assert cd["outcome"] == stack.blocked_outcome()
    assert "block" in cd["actions"] and "newExecutables" in cd["matched_selectors"]
    assert "drift-prevention" in [p["name"] for p in cd["policies"]]
    if stack.mode() != "kill":  # denied before it happened (kill mode: killed right after)
        assert "denied" in denied["event"]["type"] and not stopped.exists()

    got = story.wait(
        "kubectl get containerpolicies: BLOCKED 1, NODES 1/1, READY True",
        lambda: (r := stack.row(ns, "drift-prevention"))["BLOCKED"] == "1"
        and r["NODES"] == "1/1" and r["READY"] == "True" and r,
    )  # fmt: skip
    story(f"  {got}")


def test_audit_mode_allows_the_write_and_says_it_would_have_blocked(
    stack: Stack, namespaces: Callable[..., str], story: Story, tmp_path: Path
) -> None:
    ns = namespaces("audit")
    web = stack.start_pod(ns, "web-1", WEB)
    writer = Writer(tmp_path / "drift")
    policy = container_policy(
        "drift-audit", ns, WEB, mode="audit", **no_new_executables(writer.directory)
    )
    story(f"pod {ns}/web-1; kubectl apply: the drift policy with spec.mode: audit")
    stack.apply(policy)
    story.wait("READY True, NODES 1/1", lambda: (r := stack.row(ns, "drift-audit"))["READY"]
               == "True" and r["NODES"] == "1/1")  # fmt: skip

    story("the container writes a new executable")
    code, path = writer.attempt(web)
    assert code == 0 and path.exists()
    alerts = story.wait(
        "an alert from the audit policy",
        lambda: [a for a in stack.alerts(ns, file__path=str(path))
                 if "newExecutables" in a["cloud_defend"]["matched_selectors"]],
    )  # fmt: skip
    cd = alerts[0]["cloud_defend"]
    story(f"  alert: outcome {cd['outcome']}, would_block {cd['would_block']}, actions "
          f"{cd['actions']}, policy mode {[p['mode'] for p in cd['policies']]}")  # fmt: skip
    assert cd["outcome"] == "allowed" and cd["would_block"] is True
    assert "denied" not in alerts[0]["event"]["type"]
    assert {"kind": "ContainerPolicy", "name": "drift-audit", "mode": "audit"}.items() <= next(
        p for p in cd["policies"] if p["name"] == "drift-audit"
    ).items()
    got = story.wait("kubectl get: BLOCKED 0, ALERTS 1", lambda: (r := stack.row(
        ns, "drift-audit"))["ALERTS"] == "1" and r["BLOCKED"] == "0" and r)  # fmt: skip
    story(f"  {got}")


def test_apply_to_enforced_time_over_20_edits(
    stack: Stack, namespaces: Callable[..., str], story: Story, tmp_path: Path
) -> None:
    """Each edit flips the policy between blocking and alerting only; the time from
    `kubectl apply` to the first write that shows the edit (polled every 10 ms)."""
    ns = namespaces("edits")
    web = stack.start_pod(ns, "web-1", WEB)
    writer = Writer(tmp_path / "drift")
    story(f"pod {ns}/web-1; 20 edits of one drift policy, block ↔ alert")
    spans: list[float] = []
    for edit in range(20):
        block = edit % 2 == 0
        actions = ("alert", "block") if block else ("alert",)
        policy = container_policy("drift-edits", ns, WEB, **no_new_executables(
            writer.directory, actions))  # fmt: skip
        text = json.dumps(policy)
        t0 = time.monotonic()
        stack.kubectl("apply", "-f", "-", input=text)
        deadline = t0 + 20
        while stack.blocked(writer.attempt(web)[0]) != block:
            assert time.monotonic() < deadline, f"edit {edit} not in force after 20 s"
            time.sleep(0.01)
        spans.append(time.monotonic() - t0)
    spans.sort()
    p50 = statistics.median(spans)
    p99 = spans[min(len(spans) - 1, round(0.99 * (len(spans) - 1)))]
    story(f"kubectl apply → enforced, 20 edits: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} "
          f"ms (min {spans[0] * 1000:.0f} ms; kubectl itself included)")  # fmt: skip
    assert p99 < 10
