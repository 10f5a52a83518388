"""Policy statuses as kstatus reads them (Flux health checks, `kubectl wait`-style tools).

kstatus ignores Ready: it reads observedGeneration and the Reconciling and
Stalled conditions. Each reason the operator writes is run through the real
library (sigs.k8s.io/cli-utils/pkg/kstatus/status, built by services/install
from tests/kstatus into the services cache).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stockade.operator.objects import PolicyRecord, policy_record
from stockade.operator.status import BUNDLE_TOO_LARGE, WRITE_FAILED, NodeProblem, policy_status
from stockade.policy.reports import NodePolicyReport
from stockade.policy.resources import CountsStatus

KSTATUS = Path(os.environ.get("STOCKADE_CACHE", "/var/cache/stockade")) / "bin" / "kstatus"
NOW = datetime(2026, 11, 30, tzinfo=UTC)
UID = "0b5e7c1e-0000-4000-8000-000000000001"


def record(valid: bool = True) -> PolicyRecord:
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {"app": "web"}},
        "process": {
            "selectors": [{"name": "shells", "processName": ["bash"]}],
            "responses": [{"match": ["shells"], "actions": ["alert"]}],
        },
    }
    if not valid:
        spec["process"]["responses"][0]["match"] = ["no-such-selector"]
    return policy_record(
        {
            "apiVersion": "stockade.dev/v1alpha1",
            "kind": "ContainerPolicy",
            "metadata": {"name": "web", "namespace": "shop", "uid": UID, "generation": 3},
            "spec": spec,
        }
    )


def report(generation: int | None, error: str | None = None) -> NodePolicyReport:
    return NodePolicyReport.model_validate(
        {
            "metadata": {"name": "n1"},
            "sensor": {"instanceId": "i1", "mode": "lsm", "heartbeatTime": NOW.isoformat()},
            "policies": [] if generation is None else [{"uid": UID, "generation": generation}],
            "errors": [{"time": NOW.isoformat(), "message": error}] if error else [],
        }
    )


def status(rec: PolicyRecord, **given: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "targeted": ["n1"],
        "bundled": {"n1"},
        "node_problems": {},
        "reports": {"n1": report(3)},
        "silent": {},
        "counts": CountsStatus(),
        "previous": None,
        "now": NOW,
        **given,
    }
    out: dict[str, Any] = policy_status(rec, **args).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    return out


CASES: dict[str, tuple[Any, str]] = {
    "Applied": (lambda: status(record()), "Current"),
    "NoTargets": (lambda: status(record(), targeted=[], bundled=set()), "Current"),
    "Invalid": (lambda: status(record(valid=False)), "Failed"),
    "BundleTooLarge": (
        lambda: status(
            record(), bundled=set(), node_problems={"n1": NodeProblem(BUNDLE_TOO_LARGE, "big")}
        ),
        "Failed",
    ),
    "SensorSilent": (
        lambda: status(record(), silent={"n1": "no heartbeat for over 60 s"}),
        "Failed",
    ),
    "NodeErrors": (lambda: status(record(), reports={"n1": report(3, "no BTF")}), "Failed"),
    "Compiling": (lambda: status(record(), bundled=set()), "InProgress"),
    "WriteFailed": (
        lambda: status(
            record(), bundled=set(), node_problems={"n1": NodeProblem(WRITE_FAILED, "503")}
        ),
        "InProgress",
    ),
    "Applying": (lambda: status(record(), reports={"n1": report(2)}), "InProgress"),
}


def kstatus(objects: list[dict[str, Any]]) -> list[str]:
    if not KSTATUS.exists():
        pytest.fail(f"{KSTATUS} is missing: run services/install", pytrace=False)
    proc = subprocess.run(
        [str(KSTATUS)], input=json.dumps(objects), capture_output=True, text=True, check=True
    )
    return [json.loads(line)["status"] for line in proc.stdout.splitlines()]


def test_each_reason_reads_as_kstatus_should() -> None:
    objects, expected, reasons = [], [], []
    for reason, (make, want) in CASES.items():
        st = make()
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == reason
        objects.append(
            {
                "apiVersion": "stockade.dev/v1alpha1",
                "kind": "ContainerPolicy",
                "metadata": {"name": "web", "namespace": "shop", "generation": 3},
                "status": st,
            }
        )
        expected.append(want)
        reasons.append(reason)
    # A status not yet written for the latest generation is in progress, whatever it says.
    stale = json.loads(json.dumps(objects[0]))
    stale["metadata"]["generation"] = 4
    objects.append(stale)
    expected.append("InProgress")
    reasons.append("Applied, generation 4 not observed")
    assert dict(zip(reasons, kstatus(objects), strict=True)) == dict(
        zip(reasons, expected, strict=True)
    )
