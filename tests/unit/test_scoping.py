"""One scoping rule for `compile --pods` and the operator (issue 11, item 5).

A namespace whose labels aren't known is selected by no namespaceSelector,
not even `NotIn`: before, the compiler treated its labels as unknown and the
operator's planning as empty, so a `NotIn` selector chose differently.
"""

from __future__ import annotations

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
