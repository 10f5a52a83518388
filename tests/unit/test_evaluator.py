"""Edge cases of the spec, as plain tests of the reference evaluator and the tables."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from stockade.policy.compiler import compile_bundle
from stockade.policy.document import PolicyDocument
from stockade.policy.evaluator import Decision, Event, evaluate
from stockade.policy.model import Action
from stockade.policy.tables import (
    Operation,
    PartTables,
    container_masks,
    selector_names,
)
from stockade.sensor.abi import ActionBits

from .helpers import SPEC_RESPONSES_EXAMPLE, event, manifest, policy


def file_event(path: str | None, operation: str | list[str] = "createFile", **more: Any) -> Event:
    return event(part="file", operation=operation, file={"path": path, **more})


def decide_both(doc: PolicyDocument, ev: Event) -> Decision:
    """The reference decision, after checking the compiled tables say the same."""
    decision = evaluate(doc, ev)
    bundle = compile_bundle([doc])
    tables = PartTables.from_bundle(bundle, ev.part)
    op = Operation(
        ev.operations,
        path=ev.file.path if ev.part == "file" else ev.process.executable,
        volume=ev.file.volume,
        name=ev.process.name,
        interactive=ev.process.interactive,
    )
    mask, actions = tables.decide(container_masks(bundle, ev.workload())[ev.part], op)
    names = tuple(name for _, name in selector_names(bundle, ev.part, mask))
    assert names == decision.matched_selectors
    expected = ActionBits(0)
    for action in decision.actions:
        expected |= {"log": ActionBits.LOG, "alert": ActionBits.ALERT, "block": ActionBits.BLOCK}[
            action
        ]
    if decision.would_block:
        expected |= ActionBits.AUDIT_BLOCK
    assert actions == expected
    return decision


def path_policy(*patterns: str) -> PolicyDocument:
    return policy(
        {
            "file": {
                "selectors": [{"name": "p", "targetFilePath": list(patterns)}],
                "responses": [{"match": ["p"], "actions": ["log"]}],
            }
        }
    )


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("/usr/bin/echo", "/usr/bin/echo", True),
        ("/usr/bin/echo", "/usr/bin/echo2", False),
        ("/usr/bin/echo", "/usr/bin/echo/x", False),
        ("/usr/sbin/*", "/usr/sbin/ip", True),
        ("/usr/sbin/*", "/usr/sbin", False),  # not the directory itself
        ("/usr/sbin/*", "/usr/sbin/a/b", False),  # not grandchildren
        ("/usr/sbin/*", "/usr/sbinx", False),
        ("/usr/local/**", "/usr/local/bin/something", True),
        ("/usr/local/**", "/usr/local/x", True),
        ("/usr/local/**", "/usr/local", False),  # not the directory itself
        ("/usr/local/**", "/usr/localx/y", False),
        ("/**", "/etc/passwd", True),
        ("/**", "/x", True),
        ("/**", "/", False),
        ("/*", "/x", True),
        ("/*", "/x/y", False),
        ("/", "/", True),
        ("/usr/bin/echo", "/USR/bin/echo", False),  # case-sensitive
    ],
)
def test_path_patterns(pattern: str, path: str, hit: bool) -> None:
    decision = decide_both(path_policy(pattern), file_event(path))
    assert (decision.matched_selectors == ("p",)) == hit


def test_a_path_condition_needs_a_path() -> None:
    assert decide_both(path_policy("/**"), file_event(None)).matched_selectors == ()


SPEC_EXAMPLE = yaml.safe_load(SPEC_RESPONSES_EXAMPLE)


@pytest.mark.parametrize(
    ("operation", "path", "image", "matched", "actions"),
    [
        ("createExecutable", "/usr/bin/x", "redis", ["binDirExeMods"], {"alert", "block"}),
        ("modifyFile", "/etc/passwd", "redis", ["etcFileChanges"], {"alert", "block"}),
        ("modifyFile", "/etc/passwd", "nginx", ["etcFileChanges", "nginx"], set()),  # excluded
        ("createFile", "/usr/bin/x", "redis", [], set()),  # not an executable
        ("deleteFile", "/tmp/x", "nginx", ["nginx"], set()),  # matched, but no response uses it
    ],
)
def test_spec_response_example(
    operation: str, path: str, image: str, matched: list[str], actions: set[str]
) -> None:
    ev = event(
        part="file", operation=operation, file={"path": path}, container={"imageName": image}
    )
    decision = decide_both(policy(SPEC_EXAMPLE), ev)
    assert list(decision.matched_selectors) == matched
    assert decision.actions == {Action(a) for a in actions}


def test_one_call_can_be_several_operations() -> None:
    # Renaming over an executable: deleteFile and modifyExecutable of the target.
    doc = policy(
        {
            "file": {
                "selectors": [{"name": "exe", "operation": ["modifyExecutable"]}],
                "responses": [{"match": ["exe"], "actions": ["alert"]}],
            }
        }
    )
    ev = file_event("/usr/bin/x", ["deleteFile", "modifyExecutable"])
    assert decide_both(doc, ev).actions == {Action.ALERT}


def test_actions_of_several_responses_add_up() -> None:
    doc = policy(
        {
            "process": {
                "selectors": [
                    {"name": "all", "operation": ["exec"]},
                    {"name": "shells", "processName": ["bash"]},
                ],
                "responses": [
                    {"match": ["all"], "actions": ["log"]},
                    {"match": ["shells"], "actions": ["alert", "block"]},
                ],
            }
        }
    )
    ev = event(part="process", operation="exec", process={"name": "bash"})
    assert decide_both(doc, ev).actions == {Action.LOG, Action.ALERT, Action.BLOCK}


@pytest.mark.parametrize(
    ("values", "facts", "hit"),
    [
        (["nginx-pod-*"], {"podName": "nginx-pod-7d9"}, True),
        (["nginx-pod-*"], {"podName": "nginx-po"}, False),
        (["web-1"], {"podName": "web-10"}, False),
        (["*"], {"podName": "anything"}, True),
        (["*"], {}, False),  # the fact is unknown
    ],
)
def test_pod_name(values: list[str], facts: dict[str, Any], hit: bool) -> None:
    doc = policy(
        {
            "process": {
                "selectors": [{"name": "s", "kubernetesPodName": values}],
                "responses": [{"match": ["s"], "actions": ["log"]}],
            }
        }
    )
    decision = decide_both(doc, event(part="process", operation="fork", kubernetes=facts))
    assert bool(decision.matched_selectors) == hit


@pytest.mark.parametrize(
    ("value", "labels", "hit"),
    [
        ("production:*", {"production": ""}, True),
        ("production:*", {"staging": "x"}, False),
        ("service:auth*", {"service": "auth-api"}, True),
        ("service:auth*", {"service": "au"}, False),
        ("environment:production", {"environment": "production"}, True),
        ("environment:production", {"environment": "production-2"}, False),
    ],
)
def test_pod_label(value: str, labels: dict[str, str], hit: bool) -> None:
    doc = policy(
        {
            "process": {
                "selectors": [{"name": "s", "kubernetesPodLabel": [value]}],
                "responses": [{"match": ["s"], "actions": ["log"]}],
            }
        }
    )
    ev = event(part="process", operation="fork", kubernetes={"podLabels": labels})
    assert bool(decide_both(doc, ev).matched_selectors) == hit


@pytest.mark.parametrize(
    ("flag", "volume", "hit"),
    [
        ("ignoreVolumeMounts", "none", True),
        ("ignoreVolumeMounts", "mount", False),
        ("ignoreVolumeMounts", "file", False),
        ("ignoreVolumeMounts", None, False),
        ("ignoreVolumeFiles", "none", True),
        ("ignoreVolumeFiles", "mount", True),
        ("ignoreVolumeFiles", "file", False),
    ],
)
def test_volume_flags(flag: str, volume: str | None, hit: bool) -> None:
    doc = policy(
        {
            "file": {
                "selectors": [{"name": "s", "operation": ["createFile"], flag: True}],
                "responses": [{"match": ["s"], "actions": ["log"]}],
            }
        }
    )
    ev = file_event("/data/x", volume=volume)
    assert bool(decide_both(doc, ev).matched_selectors) == hit


@pytest.mark.parametrize(
    ("wanted", "interactive", "hit"),
    [
        (True, True, True),
        (True, False, False),
        (True, None, False),
        (False, False, True),
        (False, True, False),
    ],
)
def test_session_leader_interactive(wanted: bool, interactive: bool | None, hit: bool) -> None:
    doc = policy(
        {
            "process": {
                "selectors": [{"name": "s", "sessionLeaderInteractive": wanted}],
                "responses": [{"match": ["s"], "actions": ["alert"]}],
            }
        }
    )
    ev = event(part="process", operation="exec", process={"interactive": interactive})
    assert bool(decide_both(doc, ev).matched_selectors) == hit


def test_selector_without_operation_matches_every_operation_of_its_part() -> None:
    doc = policy(
        {
            "process": {
                "selectors": [{"name": "s", "processName": ["sh"]}],
                "responses": [{"match": ["s"], "actions": ["log"]}],
            }
        }
    )
    for op in ("fork", "exec"):
        ev = event(part="process", operation=op, process={"name": "sh"})
        assert decide_both(doc, ev).matched_selectors == ("s",)


def test_parts_never_mix() -> None:
    doc = policy(
        {
            "process": {
                "selectors": [{"name": "s", "operation": ["exec"]}],
                "responses": [{"match": ["s"], "actions": ["log"]}],
            }
        }
    )
    assert decide_both(doc, file_event("/x")) == Decision((), frozenset())


NAMESPACED = {
    "process": {
        "selectors": [{"name": "all", "operation": ["exec"]}],
        "responses": [{"match": ["all"], "actions": ["alert", "block"]}],
    }
}


@pytest.mark.parametrize(
    ("facts", "hit"),
    [
        ({"namespace": "shop", "podLabels": {"app": "web"}}, True),
        ({"namespace": "shop", "podLabels": {"app": "db"}}, False),
        ({"namespace": "prod", "podLabels": {"app": "web"}}, False),
        ({"namespace": "shop"}, False),  # labels unknown: the podSelector can't hold
    ],
)
def test_container_policy_scope(facts: dict[str, Any], hit: bool) -> None:
    spec = {**NAMESPACED, "podSelector": {"matchLabels": {"app": "web"}}}
    doc = policy(manifest("ContainerPolicy", spec))
    decision = decide_both(doc, event(part="process", operation="exec", kubernetes=facts))
    assert bool(decision.matched_selectors) == hit


def test_cluster_policy_namespace_selector() -> None:
    spec = {
        **NAMESPACED,
        "namespaceSelector": {
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]
        },
    }
    doc = policy(manifest("ClusterContainerPolicy", spec, namespace=None))
    prod = {"namespace": "prod", "namespaceLabels": {"env": "prod"}}
    dev = {"namespace": "dev", "namespaceLabels": {"env": "dev"}}
    assert evaluate(doc, event(part="process", operation="exec", kubernetes=prod)).actions
    assert not evaluate(doc, event(part="process", operation="exec", kubernetes=dev)).actions


def test_audit_mode_reports_the_block_without_doing_it() -> None:
    doc = policy(manifest("ContainerPolicy", {**NAMESPACED, "mode": "audit"}))
    ev = event(part="process", operation="exec", kubernetes={"namespace": "shop"})
    decision = decide_both(doc, ev)
    assert decision.actions == {Action.ALERT}
    assert decision.would_block


@pytest.mark.parametrize(
    "bad",
    [
        {"part": "file", "operation": "exec"},
        {"part": "network", "operation": "connect"},
        {"part": "file"},
        {"part": "file", "operation": "createFile", "file": {"path": "relative/x"}},
        {"part": "file", "operation": "createFile", "file": {"path": "/a/../b"}},
        {"part": "file", "operation": "createFile", "file": {"volume": "nfs"}},
        {"part": "file", "operation": "createFile", "colour": "red"},
    ],
)
def test_bad_events_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Event.model_validate(bad)
