"""Bad input: what the apiserver can judge is refused at `kubectl apply` with the CEL rule's
message; what only the operator can judge is Ready=False with the reason, alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Stack, Story, run
from .manifests import container_policy, exec_of

pytestmark = pytest.mark.kernel

WEB = {"app": "web"}


def test_invalid_policies_are_refused_and_the_others_stay_in_force(
    stack: Stack, namespaces: Callable[..., str], story: Story, tool: Path
) -> None:
    ns = namespaces("bad")
    web = stack.start_pod(ns, "web-1", WEB)
    story(f"pod {ns}/web-1; a good policy blocking {tool.name}")
    stack.apply(container_policy("good", ns, WEB, **exec_of(tool)))
    story.wait(f"{tool.name} stopped", lambda: stack.blocked(run(web, [str(tool)])))
    story.wait("good: Ready True/Applied", lambda: stack.ready(ns, "good") == "True/Applied")

    story("kubectl apply: block without alert (a CEL rule of the CRD)")
    refused = stack.apply(
        container_policy("silent-block", ns, WEB, **exec_of(tool, actions=("block",))),
        check=False,
    )
    story(f"  exit {refused.returncode}: {refused.stderr.strip()}")
    assert refused.returncode != 0
    assert "block needs alert in the same response" in refused.stderr

    story("kubectl apply: a file block on every createFile (the operator's safety rule)")
    unsafe = {
        "file": {
            "selectors": [{"name": "creates", "operation": ["createFile"]}],
            "responses": [{"match": ["creates"], "actions": ["alert", "block"]}],
        }
    }
    story("  " + stack.apply(container_policy("too-wide", ns, WEB, **unsafe)).stdout.strip())
    ready = story.wait("Ready=False, Invalid", lambda: (r := stack.ready(ns, "too-wide")) and
                       r.startswith("False/Invalid") and r)  # fmt: skip
    message = next(c for c in stack.status(ns, "too-wide")["conditions"]
                   if c["type"] == "Ready")["message"]  # fmt: skip
    story(f"  {ready}: {message}")
    assert "file.responses[0].match[0]" in message and "targetFilePath" in message
    row = stack.row(ns, "too-wide")
    story(f"  kubectl get containerpolicies too-wide: {row}")
    assert row["READY"] == "False"
    assert stack.blocked(run(web, [str(tool)]))  # the good one stays in force
    found = stack.bundle()
    assert found is not None and not any("/too-wide@" in p for p in found[0])
    assert stack.ready(ns, "good") == "True/Applied"
