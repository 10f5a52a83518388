"""A sensor that stops reporting makes its node's policies `SensorSilent`, and back.

The operator runs with `--sensor-silent-after 3`; the test writes the node's
NodePolicyReport as its sensor would, with a heartbeat each time, then stops.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from stockade.policy.bundle import HASH_ANNOTATION

from .conftest import Cluster, Kubectl, Operator, wait_for
from .test_operator import _policy, _ready, apply, cpol, read_bundle

pytestmark = pytest.mark.integration
THRESHOLD = 3.0  # --sensor-silent-after
MARGIN = 1.5  # the debounce (0.1 s), a pass, the status write, this test's polling


def test_a_silent_sensor_makes_its_policies_not_ready_until_it_reports_again(
    operator_crds: None, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    kubeconfig: str, namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    core = client.CoreV1Api(k8s_api)
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log")
    op.start("--standalone", "--sensor-silent-after", str(THRESHOLD))
    try:
        a = cluster.node("a")
        cluster.pod(namespace, "web-0", a, {"app": "web"})
        apply(kubectl, cpol("guard", namespace, {"app": "web"}))
        wait_for("a's bundle with guard", lambda: (f := read_bundle(core, op, a))
                 and f"{namespace}/guard@1" in f[0])  # fmt: skip
        found = read_bundle(core, op, a)
        assert found is not None
        bundle_hash = found[1].metadata.annotations[HASH_ANNOTATION]
        uid = _policy(k8s_api, namespace, "guard")["metadata"]["uid"]

        def beat(at: datetime | None = None) -> datetime:
            """Write a's report as its sensor would; returns its heartbeat."""
            heartbeat = at or datetime.now(UTC)
            cluster.report(a, {
                "sensor": {"instanceId": "a-1", "mode": "lsm",
                           "heartbeatTime": heartbeat.isoformat()},
                "bundle": {"hash": bundle_hash},
                "policies": [{"uid": uid, "generation": 1, "kind": "ContainerPolicy",
                              "namespace": namespace, "name": "guard"}],
            })  # fmt: skip
            return heartbeat

        def ready() -> dict[str, Any]:
            return _ready(_policy(k8s_api, namespace, "guard")) or {}

        def column() -> str:
            row = kubectl("get", "cpol", "guard", "-n", namespace).stdout.split("\n")[1]
            return row.split()[6]

        def sensor_silent(what: str) -> Any:
            return wait_for(what, lambda: (r := ready()).get("reason") == "SensorSilent" and r,
                            timeout=THRESHOLD + 10)  # fmt: skip

        def writes() -> float:
            return op.metrics().get("stockade_operator_status_writes_total", 0.0)

        beat()
        wait_for("Ready", lambda: ready().get("reason") == "Applied")
        assert column() == "True"

        # A sensor that keeps beating stays Ready past the threshold, and its heartbeats
        # alone write no status.
        before = writes()
        for _ in range(5):
            time.sleep(1.0)
            beat()
            assert ready().get("status") == "True"
        assert writes() == before

        # It stops: SensorSilent once its last heartbeat is THRESHOLD old, not before.
        last = beat()
        silent = sensor_silent("SensorSilent")
        after = (datetime.now(UTC) - last).total_seconds()
        print(f"last heartbeat → SensorSilent: {after:.2f} s (threshold {THRESHOLD:g} s)")
        assert THRESHOLD <= after <= THRESHOLD + MARGIN
        assert silent["status"] == "False"
        assert silent["message"].startswith(f"sensors silent: {a}: no heartbeat for over 3 s")
        assert column() == "False"
        conditions = _policy(k8s_api, namespace, "guard")["status"]["conditions"]
        assert {c["type"]: c["status"] for c in conditions} == {"Ready": "False", "Stalled": "True"}
        before = writes()
        time.sleep(2.0)  # silent for longer: the same status, not rewritten
        assert writes() == before

        # It reports again: Ready at once (the report's watch event).
        started = time.monotonic()
        beat()
        wait_for("Ready again", lambda: ready().get("reason") == "Applied", timeout=5)
        print(f"fresh heartbeat → Ready: {time.monotonic() - started:.2f} s")
        assert column() == "True"

        # A heartbeat an hour ahead of the operator's clock is trusted for THRESHOLD
        # from when it was seen, not for an hour.
        started = time.monotonic()
        beat(datetime.now(UTC) + timedelta(hours=1))
        silent = sensor_silent("SensorSilent despite the future heartbeat")
        after = time.monotonic() - started
        print(f"heartbeat 1 h ahead → SensorSilent: {after:.2f} s")
        assert after <= THRESHOLD + MARGIN
        assert "ahead of the operator's clock" in silent["message"]
    finally:
        op.stop()
