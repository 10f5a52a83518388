"""A sensor's silence: when its heartbeat is too old, the guard against a clock ahead,
and where SensorSilent ranks among a policy's reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stockade.operator.heartbeats import Heartbeats
from stockade.operator.objects import PolicyRecord, policy_record
from stockade.operator.status import WRITE_FAILED, NodeProblem, policy_status
from stockade.policy.reports import NodePolicyReport
from stockade.policy.resources import CountsStatus

T0 = datetime(2026, 11, 30, 3, 0, 0, tzinfo=UTC)
UID = "0b5e7c1e-0000-4000-8000-000000000002"


def report(beat: datetime, errors: tuple[str, ...] = (), generation: int = 1) -> NodePolicyReport:
    return NodePolicyReport.model_validate(
        {
            "metadata": {"name": "n1"},
            "sensor": {"instanceId": "i1", "mode": "lsm", "heartbeatTime": beat.isoformat()},
            "policies": [{"uid": UID, "generation": generation}],
            "errors": [{"time": T0.isoformat(), "message": m} for m in errors],
        }
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_silent_after_the_threshold_and_back_with_a_fresh_heartbeat() -> None:
    beats = Heartbeats(after=60)
    assert beats.update({"n1": report(T0)}, at(5)) == set()
    assert beats.silent == {} and beats.due == at(60)
    assert beats.update({"n1": report(T0)}, at(59.9)) == set()
    assert beats.update({"n1": report(T0)}, at(60)) == {"n1"}
    assert beats.silent == {"n1": "no heartbeat for over 60 s (last 2026-11-30T03:00:00Z)"}
    assert beats.due is None  # nothing left to cross: only a report brings it back
    # Still silent later: the same detail, so no status is rewritten while it stays so.
    assert beats.update({"n1": report(T0)}, at(600)) == set()
    assert beats.update({"n1": report(at(601))}, at(601.2)) == {"n1"}
    assert beats.silent == {} and beats.due == at(661)


def test_the_soonest_crossing_is_due_and_no_report_is_not_silence() -> None:
    beats = Heartbeats(after=10)
    assert beats.update({"n1": report(at(3)), "n2": report(at(1))}, at(4)) == set()
    assert beats.due == at(11)
    assert beats.update({"n1": report(at(3)), "n2": report(at(1))}, at(11)) == {"n2"}
    assert beats.due == at(13)
    assert beats.update({}, at(500)) == {"n2"}  # report gone: "no report" (Applying) again
    assert beats.silent == {} and beats.due is None


def test_a_heartbeat_ahead_of_the_operators_clock_is_trusted_only_for_the_threshold() -> None:
    beats = Heartbeats(after=60)
    ahead = report(at(3600))  # the sensor's clock an hour fast
    assert beats.update({"n1": ahead}, at(10)) == set()
    assert beats.due == at(70)  # from when it was seen, not from the sensor's claim
    assert beats.update({"n1": ahead}, at(70)) == {"n1"}
    assert beats.silent["n1"] == (
        "no heartbeat for over 60 s (last 2026-11-30T04:00:00Z"
        " (ahead of the operator's clock; seen 2026-11-30T03:00:10Z))"
    )


def web_policy(*actions: str) -> PolicyRecord:
    """shop/web, generation 1: one process selector with these actions."""
    return policy_record(
        {
            "apiVersion": "stockade.dev/v1alpha1",
            "kind": "ContainerPolicy",
            "metadata": {"name": "web", "namespace": "shop", "uid": UID, "generation": 1},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "process": {
                    "selectors": [{"name": "shells", "processName": ["bash"]}],
                    "responses": [{"match": ["shells"], "actions": list(actions)}],
                },
            },
        }
    )


def status(silent: dict[str, str], **given: Any) -> tuple[str, str]:
    record = web_policy("alert")
    nodes = [f"n{i}" for i in range(1, 9)]
    args: dict[str, Any] = {
        "targeted": nodes,
        "bundled": set(nodes),
        "node_problems": {},
        "reports": {n: report(T0) for n in nodes},
        "counts": CountsStatus(),
        "previous": None,
        "now": T0,
        **given,
    }
    out = policy_status(record, silent=silent, **args)
    ready = next(c for c in out.conditions or [] if c.type == "Ready")
    return ready.reason, ready.message


def test_sensor_silent_ranks_after_the_operators_problems_and_before_the_reports() -> None:
    silent = {f"n{i}": f"silent {i}" for i in range(1, 8)}
    reason, message = status(silent)
    assert reason == "SensorSilent"
    assert message.startswith("sensors silent: n1: silent 1; n2: silent 2; ")
    assert "n5: silent 5 and 2 more; is the sensor running" in message  # a bounded list
    # Before what is read from the reports (stale when silent): errors, lagging generations.
    stale = {n: report(T0, errors=("E2BIG",), generation=0) for n in silent}
    assert status(silent, reports=stale)[0] == "SensorSilent"
    # After what the operator itself can't hand out.
    problem = {"n8": NodeProblem(WRITE_FAILED, "503")}
    assert status(silent, node_problems=problem)[0] == WRITE_FAILED
    # A silent node not targeted by the policy doesn't concern it.
    assert status({"n99": "silent"})[0] == "Applied"
