"""One scoping rule for `compile --pods` and the operator (issue 11, item 5).

A namespace whose labels aren't known is selected by no namespaceSelector,
not even `NotIn`: before, the compiler treated its labels as unknown and the
operator's planning as empty, so a `NotIn` selector chose differently.
"""

from __future__ import annotations

import random
from typing import Any

from stockade.operator.objects import PodRef, policy_record
from stockade.operator.targeting import Indexes, Targeting
from stockade.policy.compiler import Pod, applicable, compile_bundle
from stockade.policy.document import PolicyDocument
from stockade.policy.predicates import Workload
from stockade.policy.tables import container_masks

from .helpers import manifest, policy

NOT_DEV = {
    "namespaceSelector": {
        "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]
    },
    "process": {
        "selectors": [{"name": "all", "operation": ["exec"]}],
        "responses": [{"match": ["all"], "actions": ["alert"]}],
    },
}


def not_dev() -> PolicyDocument:
    return policy(manifest("ClusterContainerPolicy", NOT_DEV, name="not-dev", namespace=None))


def test_an_unknown_namespace_is_selected_by_no_namespace_selector() -> None:
    doc = not_dev()
    ghost = [Pod("ghost", "x")]
    assert applicable([doc], ghost, {"ghost": {}}) == [doc]  # known, no env label: selected
    assert applicable([doc], ghost, {"ghost": {"env": "dev"}}) == []
    assert applicable([doc], ghost, {}) == []  # unknown: not selected
    assert compile_bundle([doc], pods=ghost, namespace_labels={}).policies == ()

    # The bundle's scope, from the same labels, agrees: the sensor doesn't apply it there.
    both = [Pod("ghost", "x"), Pod("known", "y")]
    bundle = compile_bundle([doc], pods=both, namespace_labels={"known": {}})
    assert bundle.policies[0].scope.namespaces == ("known",)
    assert container_masks(bundle, Workload(namespace="known"))["process"] == 1
    assert container_masks(bundle, Workload(namespace="ghost"))["process"] == 0


def test_the_operator_decides_as_the_compiler() -> None:
    body = manifest("ClusterContainerPolicy", NOT_DEV, name="not-dev", namespace=None)
    body["metadata"].update(uid="u1", generation=1)
    record = policy_record(body)
    assert record.document is not None
    pods = {
        "ghost-node": {("ghost", "x"): PodRef("ghost", "x", (), "Running")},
        "known-node": {("known", "y"): PodRef("known", "y", (), "Running")},
    }
    stores: dict[str, Any] = {
        "namespaces": {"known": [{}]},  # kopf's index: a store per key; "ghost" not seen yet
        "nodes": {"ghost-node": ["uid-g"], "known-node": ["uid-k"]},
        "policies": {"": [record]},
        "reports": {},
    }
    ix = Indexes(pods=pods, pod_nodes={}, **stores)
    targeting = Targeting()
    for node, expected in (("ghost-node", []), ("known-node", [record.key])):
        inputs = targeting.inputs(ix, node)
        assert inputs is not None
        assert [r.key for r in inputs.policies] == expected
        node_pods = [p.pod() for p in pods[node].values()]
        compiled = applicable([record.document], node_pods, inputs.labels)
        assert len(compiled) == len(expected)


def test_kept_verdicts_choose_as_scoping_afresh() -> None:
    """A random run of edits (a policy's scope, a pod's labels, a namespace's labels, pods
    moving): the targeting that keeps each node's verdicts chooses as a fresh one."""
    rng = random.Random(7)
    apps, namespaces, nodes = ["a", "b", "c"], ["n1", "n2", "n3"], ["x", "y", "z"]

    def scope() -> dict[str, Any]:
        pods = {"podSelector": {"matchLabels": {"app": rng.choice(apps)}}}
        ns = {"namespaceSelector": {"matchLabels": {"tier": rng.choice(["1", "2"])}}}
        return rng.choice([{}, pods, ns, {**pods, **ns}])

    generation = 0

    def record(kind: str, name: str, namespace: str | None) -> Any:
        nonlocal generation
        generation += 1
        spec = {**scope(), "process": NOT_DEV["process"]}
        body = manifest(kind, spec, name=name, namespace=namespace)
        body["metadata"].update(uid=f"uid-{name}", generation=generation)
        return policy_record(body)

    policies: dict[tuple[str, str], Any] = {
        ("", f"c{i}"): record("ClusterContainerPolicy", f"c{i}", None) for i in range(4)
    }
    policies |= {(ns, f"p{ns}"): record("ContainerPolicy", f"p{ns}", ns) for ns in namespaces}
    pods: dict[str, dict[tuple[str, str], PodRef]] = {node: {} for node in nodes}
    labels = {ns: [{"tier": rng.choice(["1", "2"])}] for ns in namespaces[:2]}  # n3 unknown
    kept = Targeting()
    for step in range(300):
        what = rng.choice(["policy", "pod", "namespace"])
        if what == "policy":
            ns, name = rng.choice(list(policies))
            kind = "ContainerPolicy" if ns else "ClusterContainerPolicy"
            policies[ns, name] = record(kind, name, ns or None)
        elif what == "pod":
            for node_pods in pods.values():  # the pod moves (or comes back changed)
                for ns in namespaces:
                    node_pods.pop((ns, f"pod{step % 5}"), None)
            ns = rng.choice(namespaces)
            ref = PodRef(ns, f"pod{step % 5}", (("app", rng.choice(apps)),), "Running")
            pods[rng.choice(nodes)][ns, ref.name] = ref
        else:
            labels[rng.choice(namespaces)] = [{"tier": rng.choice(["1", "2"])}]
        stores: dict[str, Any] = {
            "namespaces": labels,
            "nodes": {node: [f"uid-{node}"] for node in nodes},
            "policies": {
                ns: [r for (n, _), r in policies.items() if n == ns] for ns in ["", *namespaces]
            },
            "reports": {},
        }
        ix = Indexes(pods=pods, pod_nodes={}, **stores)
        for node in nodes:
            assert kept.inputs(ix, node) == Targeting().inputs(ix, node), (step, node)
