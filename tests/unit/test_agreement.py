"""The compiled tables decide exactly as the reference evaluator, on generated cases.

Hypothesis draws policies (bare, namespaced and cluster-wide, enforce and
audit, several per bundle) from small vocabularies so that conditions hit
often, and operations from the same vocabularies; the table interpreter,
fed only the bundle, must agree with the spec read literally on the matched
selectors and the actions.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.policy.compiler import PART_OPERATIONS, compile_bundle
from stockade.policy.document import PolicyDocument
from stockade.policy.evaluator import Event, evaluate
from stockade.policy.loader import YamlDocument, load_document
from stockade.policy.model import Action, PartName
from stockade.policy.rules import check
from stockade.policy.tables import (
    Operation,
    PartTables,
    container_masks,
    selector_names,
)
from stockade.sensor.abi import ActionBits

DIRS = ["/", "/usr", "/usr/bin", "/usr/local", "/usr/local/bin", "/etc", "/etc/ssl"]
FILES = [d.rstrip("/") + "/" + n for d in DIRS for n in ("a", "bin", "etc")]
PATHS = sorted(set(DIRS + FILES))
PATTERNS = sorted(
    set(PATHS + [d.rstrip("/") + "/*" for d in DIRS] + [d.rstrip("/") + "/**" for d in DIRS])
)
NAMESPACES = ["shop", "prod"]
NS_LABELS = {"shop": {"env": "dev"}, "prod": {"env": "prod", "tier": "gold"}}
POD_NAMES = ["web-1", "web-2", "db-0"]
POD_NAME_VALUES = ["web-1", "web-*", "db-0", "*", "w*"]
LABELS = [{"app": "web"}, {"app": "db", "tier": "front"}, {}]
LABEL_VALUES = ["app:web", "app:*", "app:w*", "tier:front", "missing:x"]
IMAGES = [("docker.io/library/nginx", "nginx"), ("quay.io/app/redis", "redis")]
TAGS = ["latest", "1.0"]
PROCESS_NAMES = ["bash", "sh", "nginx"]

CONTAINER_CONDITIONS = {
    "containerImageFullName": [i[0] for i in IMAGES],
    "containerImageName": [i[1] for i in IMAGES],
    "containerImageTag": TAGS,
    "kubernetesClusterId": ["c1", "c2"],
    "kubernetesClusterName": ["east", "west"],
    "kubernetesNamespace": NAMESPACES,
    "kubernetesPodName": POD_NAME_VALUES,
    "kubernetesPodLabel": LABEL_VALUES,
}


def values(choices: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(choices), min_size=1, max_size=3, unique=True)


@st.composite
def selector(draw: st.DrawFn, part: str, index: int) -> dict[str, Any]:
    conditions: dict[str, Any] = {"name": f"S{index}"}
    for name, choices in CONTAINER_CONDITIONS.items():
        if draw(st.integers(0, 5)) == 0:
            conditions[name] = draw(values(choices))
    if draw(st.booleans()):
        conditions["operation"] = draw(values(list(PART_OPERATIONS[part])))  # type: ignore[index]
    if draw(st.booleans()):
        key = "targetFilePath" if part == "file" else "processExecutable"
        conditions[key] = draw(values(PATTERNS))
    if part == "file":
        flag = draw(st.sampled_from([None, "ignoreVolumeMounts", "ignoreVolumeFiles"]))
        if flag:
            conditions[flag] = draw(st.booleans())
    else:
        if "processExecutable" not in conditions and draw(st.booleans()):
            conditions["processName"] = draw(values(PROCESS_NAMES))
        if draw(st.booleans()):
            conditions["sessionLeaderInteractive"] = draw(st.booleans())
    for a, b in (("containerImageFullName", "containerImageName"),):
        if a in conditions and b in conditions:
            del conditions[b]
    if len(conditions) == 1:
        conditions["operation"] = [PART_OPERATIONS[part][0]]  # type: ignore[index]
    return conditions


@st.composite
def policy_part(draw: st.DrawFn, part: str) -> dict[str, Any]:
    count = draw(st.integers(1, 5))
    selectors = [draw(selector(part, i)) for i in range(count)]
    # Names are case-insensitive: responses sometimes spell them differently.
    names = [s["name"] for s in selectors] + [s["name"].lower() for s in selectors]
    responses = []
    for _ in range(draw(st.integers(1, 4))):
        response: dict[str, Any] = {
            "match": draw(
                st.lists(st.sampled_from(names), min_size=1, max_size=2, unique_by=str.lower)
            ),
            "actions": draw(values(["log", "alert", "block"])),
        }
        if draw(st.booleans()):
            response["exclude"] = draw(
                st.lists(st.sampled_from(names), min_size=1, max_size=2, unique_by=str.lower)
            )
        if "block" in response["actions"] and "alert" not in response["actions"]:
            response["actions"].append("alert")
        responses.append(response)
    return {"selectors": selectors, "responses": responses}


@st.composite
def document(draw: st.DrawFn, index: int) -> PolicyDocument:
    spec: dict[str, Any] = {}
    for part in draw(st.sampled_from([["process"], ["file"], ["process", "file"]])):
        spec[part] = draw(policy_part(part))
    kind = draw(st.sampled_from(["bare", "ContainerPolicy", "ClusterContainerPolicy"]))
    if kind == "bare":
        data: dict[str, Any] = spec
    else:
        spec["mode"] = draw(st.sampled_from(["enforce", "audit"]))
        if draw(st.booleans()):
            spec["podSelector"] = {"matchLabels": draw(st.sampled_from(LABELS))}
        if kind == "ClusterContainerPolicy" and draw(st.booleans()):
            spec["namespaceSelector"] = draw(
                st.sampled_from(
                    [
                        {"matchLabels": {"env": "prod"}},
                        {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                        {
                            "matchExpressions": [
                                {"key": "env", "operator": "NotIn", "values": ["prod"]}
                            ]
                        },
                    ]
                )
            )
        data = {
            "apiVersion": "stockade.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": f"p{index}", "namespace": draw(st.sampled_from(NAMESPACES))},
            "spec": spec,
        }
    loaded = load_document(YamlDocument(data, 1), f"p{index}.yaml")
    assert loaded.document is not None, loaded.findings
    doc = loaded.document
    # Blocking every write is refused by the spec's safety rule: drop such blocks.
    if [f for f in check(doc.policy) if f.severity == "error"]:
        for part in spec.values():
            if isinstance(part, dict) and "responses" in part:
                for r in part["responses"]:
                    r["actions"] = [a for a in r["actions"] if a != "block"]
        loaded = load_document(YamlDocument(data, 1), f"p{index}.yaml")
        assert loaded.document is not None and loaded.valid, loaded.findings
        doc = loaded.document
    return doc


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def event(draw: st.DrawFn) -> Event:
    part: PartName = draw(st.sampled_from(["process", "file"]))
    ops = draw(
        st.lists(st.sampled_from(PART_OPERATIONS[part]), min_size=1, max_size=2, unique=True)
    )
    image = draw(optional(st.sampled_from(IMAGES)))
    namespace = draw(optional(st.sampled_from(NAMESPACES)))
    data: dict[str, Any] = {
        "part": part,
        "operation": ops if len(ops) > 1 else ops[0],
        "container": {
            "imageFullName": image[0] if image else None,
            "imageName": image[1] if image else None,
            "imageTag": draw(optional(st.sampled_from(TAGS))),
        },
        "kubernetes": {
            "clusterId": draw(optional(st.sampled_from(["c1", "c2"]))),
            "clusterName": draw(optional(st.sampled_from(["east", "west"]))),
            "namespace": namespace,
            "podName": draw(optional(st.sampled_from(POD_NAMES))),
            "podLabels": draw(optional(st.sampled_from(LABELS))),
            "namespaceLabels": NS_LABELS.get(namespace) if namespace else None,
        },
        "file": {
            "path": draw(optional(st.sampled_from(PATHS))),
            "volume": draw(optional(st.sampled_from(["none", "mount", "file"]))),
        },
        "process": {
            "executable": draw(optional(st.sampled_from(PATHS))),
            "name": draw(optional(st.sampled_from(PROCESS_NAMES))),
            "interactive": draw(optional(st.booleans())),
        },
    }
    return Event.model_validate(data)


def reference(docs: list[PolicyDocument], ev: Event) -> tuple[set[tuple[str, str]], ActionBits]:
    matched: set[tuple[str, str]] = set()
    actions = ActionBits(0)
    for doc in docs:
        decision = evaluate(doc, ev)
        matched |= {(doc.key, name) for name in decision.matched_selectors}
        for action in decision.actions:
            actions |= {
                Action.LOG: ActionBits.LOG,
                Action.ALERT: ActionBits.ALERT,
                Action.BLOCK: ActionBits.BLOCK,
            }[action]
        if decision.would_block:
            actions |= ActionBits.AUDIT_BLOCK
    return matched, actions


def compiled(docs: list[PolicyDocument], ev: Event) -> tuple[set[tuple[str, str]], ActionBits]:
    bundle = compile_bundle(docs, namespace_labels=NS_LABELS)
    masks = container_masks(bundle, ev.workload())
    tables = PartTables.from_bundle(bundle, ev.part)
    facts = ev.file if ev.part == "file" else ev.process
    operation = Operation(
        operations=ev.operations,
        path=ev.file.path if ev.part == "file" else ev.process.executable,
        volume=ev.file.volume,
        name=ev.process.name,
        interactive=ev.process.interactive,
    )
    assert facts is not None
    mask, actions = tables.decide(masks[ev.part], operation)
    keys = [f"{p.namespace}/{p.name}" if p.namespace else p.name for p in bundle.policies]
    return {(keys[p], name) for p, name in selector_names(bundle, ev.part, mask)}, actions


@st.composite
def documents(draw: st.DrawFn) -> list[PolicyDocument]:
    return [draw(document(i)) for i in range(draw(st.integers(1, 3)))]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=documents(), ev=event())
def test_tables_agree_with_reference(docs: list[PolicyDocument], ev: Event) -> None:
    assert compiled(docs, ev) == reference(docs, ev)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=documents(), events=st.lists(event(), min_size=5, max_size=20))
def test_one_bundle_decides_many_operations(
    docs: list[PolicyDocument], events: list[Event]
) -> None:
    for ev in events:
        assert compiled(docs, ev) == reference(docs, ev)
