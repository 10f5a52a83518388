"""The sensor's NodePolicyReport: built on the record loop, written by a thread of its own.

The report is written whole (server-side apply, field manager `stockade-sensor`), named
after the node, owned by its Node (so it goes with the node) and tagged with the Node's
UID (so a report left by an earlier Node of the same name is told apart). The loop hands
over a new body when something changed or a heartbeat is due; the writer sends the latest
one and, while the apiserver is away, keeps only the latest: a report is a state, not a log.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from stockade.kube import backoff
from stockade.policy.reports import (
    AppliedBundle,
    NodeError,
    NodePolicyReport,
    PolicyCounters,
    Sensor,
)
from stockade.policy.resources import GROUP, VERSION, ObjectMeta
from stockade.sensor.enforcer import Tally

__all__ = ["FIELD_MANAGER", "ReportWriter", "report_body"]

FIELD_MANAGER = "stockade-sensor"
PLURAL = "nodepolicyreports"
WRITE_TIMEOUT = 10.0
MAX_ERRORS = 32  # the report's schema holds this many


def report_body(
    *,
    node: str,
    node_uid: str,
    sensor: Sensor,
    bundle: AppliedBundle | None,
    tallies: Iterable[Tally],
    dropped: int,
    errors: Iterable[NodeError],
) -> dict[str, Any]:
    """The whole report as the apiserver takes it."""
    report = NodePolicyReport(
        metadata=ObjectMeta(name=node),
        sensor=sensor,
        node_uid=node_uid,
        bundle=bundle,
        policies=[
            PolicyCounters(
                uid=t.policy.uid,
                generation=t.policy.generation,
                kind=t.policy.kind,
                namespace=t.policy.namespace,
                name=t.policy.name,
                blocked=t.blocked,
                alerted=t.alerted,
                logged=t.logged,
            )
            for t in tallies
        ],
        dropped_events=dropped,
        errors=list(errors)[-MAX_ERRORS:],
    )
    body: dict[str, Any] = report.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"] = {
        "name": node,
        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}],
    }
    return body


class ReportWriter:
    """Writes the latest body handed over; retries after a back-off while it fails."""

    def __init__(self, api: client.ApiClient, log: logging.Logger) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.log = log
        self.writes = 0
        self.failures = 0
        self.acknowledged: dict[tuple[str, int], tuple[int, int, int]] = {}  # last written
        self.last_error: str | None = None
        self._latest: dict[str, Any] | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="stockade report", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, body: dict[str, Any]) -> None:
        with self._wake:
            self._latest = body
            self._wake.notify()

    def stop(self, timeout: float = WRITE_TIMEOUT + 1) -> None:
        """Write what is pending, then stop; waits out a write in flight (so `acknowledged`
        is settled: what a stopping sensor keeps as unreported is never also reported)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        attempts = 0
        while True:
            with self._wake:
                while self._latest is None and not self._stopping:
                    self._wake.wait()
                body, self._latest = self._latest, None
                stopping = self._stopping
            if body is not None and not self._write(body):
                attempts += 1
                with self._wake:  # a newer body, if any, wins; else this one again
                    if self._latest is None:
                        self._latest = body
                    if not stopping:
                        self._wake.wait(backoff(attempts))
                if stopping:
                    return
                continue
            attempts = 0
            if stopping:
                return

    def _write(self, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        try:
            self.objects.patch_cluster_custom_object(
                GROUP, VERSION, PLURAL, name, body,
                field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml", _request_timeout=WRITE_TIMEOUT,
            )  # fmt: skip
        except Exception as exc:  # whatever the client raises: the newest body, later
            self.failures += 1
            reason = _reason(exc)
            if reason != self.last_error:
                self.log.warning("can't write the NodePolicyReport", extra={"error": reason})
            self.last_error = reason
            return False
        self.writes += 1
        self.last_error = None
        self.acknowledged = {
            (p["uid"], p["generation"]): (p["blocked"], p["alerted"], p["logged"])
            for p in body.get("policies", [])
        }
        return True


def _reason(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "{}").get("message")
        except ValueError:
            message = None
        return f"{exc.status} {exc.reason}: {message or ''}".strip()
    return f"{type(exc).__name__}: {exc}"


def now() -> datetime:
    return datetime.now(UTC)
