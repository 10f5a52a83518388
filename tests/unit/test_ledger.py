"""Counts per Node UID (stockade/operator/ledger.py): restarts, nodes gone and back, size."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from stockade.operator.ledger import PREFIX, RETIRED, Ledger
from stockade.operator.objects import policy_record
from stockade.operator.status import policy_status
from stockade.policy.reports import NodePolicyReport
from stockade.policy.resources import CountsStatus

NOW = datetime(2026, 11, 30, tzinfo=UTC)
P = "policy-uid-1"


def report(instance: str, blocked: int, generation: int = 1) -> NodePolicyReport:
    return NodePolicyReport.model_validate(
        {
            "metadata": {"name": "n"},
            "sensor": {"instanceId": instance, "mode": "lsm", "heartbeatTime": NOW.isoformat()},
            "policies": [{"uid": P, "generation": generation, "blocked": blocked}],
        }
    )


def blocked(ledger: Ledger) -> int:
    return ledger.counts(P).blocked


def test_sensor_restarts_neither_lower_nor_double() -> None:
    ledger = Ledger()
    assert ledger.fold("a", "uid-a", report("i1", 3)) == {P}
    assert ledger.fold("a", "uid-a", report("i1", 3)) == set()  # the same report again
    ledger.fold("a", "uid-a", report("i2", 1))  # restarted: from zero
    assert blocked(ledger) == 4
    ledger.fold("a", "uid-a", report("i2", 2, generation=2))  # generation 1 left the bundle
    assert blocked(ledger) == 6


def test_a_policy_that_leaves_a_node_and_comes_back_adds_to_what_it_counted() -> None:
    ledger = Ledger()
    ledger.fold("a", "uid-a", report("i1", 4))
    left = NodePolicyReport.model_validate(
        {**report("i1", 0).model_dump(by_alias=True, mode="json"), "policies": []}
    )
    ledger.fold("a", "uid-a", left)  # its pods left the node: out of the bundle
    assert blocked(ledger) == 4
    ledger.fold("a", "uid-a", report("i1", 1))  # back, counting from zero
    assert blocked(ledger) == 5


def test_a_node_gone_and_back_under_its_name_is_another_node() -> None:
    """Issue 12's reproduction: counts retired with the old Node, the new one adds to them."""
    ledger = Ledger()
    ledger.fold("a", "uid-a1", report("i1", 5))
    assert ledger.retire({"uid-b"}) == {P}
    assert blocked(ledger) == 5
    ledger.fold("a", "uid-a2", report("i2", 3))
    assert blocked(ledger) == 8
    assert ledger.retire({"uid-a2"}) == set()  # retired once


def round_trip(ledger: Ledger) -> Ledger:
    stored = {}
    for node_uid in [*ledger.nodes, ""]:
        body = ledger.body(node_uid, "ns")
        stored[body["metadata"]["name"]] = (body["data"], "1")
    return Ledger.loaded(stored)


def test_stored_and_loaded_counts_are_the_same() -> None:
    ledger = Ledger()
    ledger.fold("a", "uid-a", report("i1", 5))
    ledger.fold("b", "uid-b", report("i1", 2))
    ledger.retire({"uid-b"})
    again = round_trip(ledger)
    assert blocked(again) == 7
    assert set(again.nodes) == {"uid-a", "uid-b"}
    # A crash after the retired totals were written, before uid-a's ConfigMap was
    # deleted: loading again doesn't count uid-a twice.
    assert blocked(round_trip(again)) == 7
    # Its ConfigMap deleted: the retired list drops it, the counts stay.
    stored = {
        PREFIX + "uid-b": (again.body("uid-b", "ns")["data"], "1"),
        RETIRED: (again.body("", "ns")["data"], "1"),
    }
    after = Ledger.loaded(stored)
    assert after.retiring == set() and blocked(after) == 7


def test_status_stays_small_at_5000_nodes() -> None:
    ledger = Ledger()
    for n in range(5000):
        ledger.fold(f"node-{n}", f"uid-{n}", report(f"i{n}", 1))
    record = policy_record(
        {
            "apiVersion": "stockade.dev/v1alpha1",
            "kind": "ClusterContainerPolicy",
            "metadata": {"name": "guard", "uid": P, "generation": 1},
            "spec": {
                "process": {
                    "selectors": [{"name": "shells", "processName": ["bash"]}],
                    "responses": [{"match": ["shells"], "actions": ["alert"]}],
                }
            },
        }
    )
    status = policy_status(
        record,
        targeted=[],
        bundled=set(),
        node_problems={},
        reports={},
        silent={},
        counts=ledger.counts(P),
        previous=None,
        now=NOW,
    )
    assert status.counts == CountsStatus(blocked=5000)
    size = len(json.dumps(status.model_dump(by_alias=True, exclude_none=True, mode="json")))
    print(f"status at 5,000 nodes: {size} bytes")
    assert size < 2048
