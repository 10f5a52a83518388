"""A blocking policy's Ready message says how many applied nodes can't deny before the
operation: those in kill or observe mode; lsm and fmodret nodes deny (EPERM)."""

from __future__ import annotations

from stockade.operator.status import policy_status
from stockade.policy.reports import EnforcementMode, NodePolicyReport
from stockade.policy.resources import CountsStatus

from .test_heartbeats import T0, UID, web_policy


def ready_message(modes: list[EnforcementMode]) -> str:
    record = web_policy("alert", "block")
    nodes = [f"n{i}" for i in range(len(modes))]
    reports = {
        n: NodePolicyReport.model_validate(
            {
                "metadata": {"name": n},
                "sensor": {"instanceId": "i1", "mode": m, "heartbeatTime": T0.isoformat()},
                "policies": [{"uid": UID, "generation": 1}],
            }
        )
        for n, m in zip(nodes, modes, strict=True)
    }
    out = policy_status(
        record, targeted=nodes, bundled=set(nodes), node_problems={}, reports=reports,
        silent={}, counts=CountsStatus(), previous=None, now=T0,
    )  # fmt: skip
    ready = next(c for c in out.conditions or [] if c.type == "Ready")
    assert ready.reason == "Applied"
    return ready.message


def test_fmodret_nodes_deny_kill_and_observe_nodes_do_not() -> None:
    assert ready_message([EnforcementMode.LSM, EnforcementMode.FMODRET]) == ("applied on 2/2 nodes")
    assert ready_message(list(EnforcementMode)) == (
        "applied on 4/4 nodes; 2 of them can't deny before the operation (neither BPF LSM nor"
        " fmod_ret): there block kills the process, or only alerts in observe mode"
    )
