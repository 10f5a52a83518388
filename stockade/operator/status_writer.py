"""Status writing: each affected policy's status from its targets, bundles and reports.

A status is written only when it differs from what is stored (`policy_status`
is pure), with an Event for `Invalid` and `NodeErrors` once per distinct message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from stockade.operator import metrics
from stockade.operator.bundle_writer import WRITE_ERRORS, BundleWriter
from stockade.operator.kube import Kube
from stockade.operator.objects import PolicyKey, PolicyRecord
from stockade.operator.status import READY, policy_status, update_ledger
from stockade.operator.targeting import Indexes, Targeting
from stockade.policy.reports import NodePolicyReport
from stockade.policy.resources import CounterLedger, PolicyStatus

log = logging.getLogger("stockade.operator")


class StatusWriter:
    """Owns the statuses the operator wrote (by policy uid): a watch event may bring an
    older copy back, and counts must never fold into a stale ledger.

    `retry(key)`: called when a policy's status write failed.
    """

    def __init__(self, kube: Kube, component: str, retry: Callable[[PolicyKey], None]) -> None:
        self.kube = kube
        self.component = component
        self.retry = retry
        self.statuses: dict[str, PolicyStatus] = {}
        # uid → (the policy's resourceVersion a write was based on, the one it made)
        self.versions: dict[str, tuple[str, str]] = {}

    def counting(self, ix: Indexes, node: str) -> set[PolicyKey]:
        """The policies whose counts ledger has an entry for `node`."""
        out = set()
        for store in ix.policies.values():
            for r in store:
                status = self.statuses.get(r.uid, r.status)
                if status is not None and status.ledger and node in status.ledger.nodes:
                    out.add(r.key)
        return out

    async def write(
        self,
        keys: Iterable[PolicyKey],
        records: Mapping[PolicyKey, PolicyRecord],
        ix: Indexes,
        targeting: Targeting,
        bundles: BundleWriter,
    ) -> None:
        reports: dict[str, NodePolicyReport] = {}
        for node, store in ix.reports.items():
            report = next(iter(store), None)
            if report is not None and node in ix.nodes:
                reports[node] = report
        existing = set(ix.nodes)
        now = datetime.now(UTC).replace(microsecond=0)
        live = {r.uid for r in records.values()}
        for gone in self.statuses.keys() - live:
            del self.statuses[gone]
        for gone in self.versions.keys() - live:
            del self.versions[gone]
        writes = []
        for key in sorted(keys):
            record = records.get(key)
            if record is None:
                continue
            previous = self.statuses.get(record.uid, record.status)
            targeted = sorted(targeting.nodes_of(key))
            ledger = update_ledger(
                previous.ledger if previous and previous.ledger else CounterLedger(),
                record.uid,
                reports,
                existing,
            )
            status = policy_status(
                record,
                targeted=targeted,
                bundled={
                    n for n in targeted if bundles.holds(n, key, record.uid, record.generation)
                },
                node_problems={n: p for n in targeted if (p := bundles.problem(n, key))},
                reports=reports,
                ledger=ledger,
                previous=previous,
                now=now,
            )
            if previous is not None and _dump(previous) == _dump(status):
                self.statuses[record.uid] = previous
                continue
            writes.append(self._write(record, status, previous))
        await asyncio.gather(*writes)

    async def _write(
        self, record: PolicyRecord, status: PolicyStatus, previous: PolicyStatus | None
    ) -> None:
        based, made = self.versions.get(record.uid, ("", ""))
        # The watch may not have brought back this operator's last write yet.
        version = made if based == record.version else record.version
        try:
            made = await self.kube.put_policy_status(
                record.kind, record.namespace, record.name, _dump(status), version
            )
        except WRITE_ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                log.info("policy deleted before its status write", extra={"policy": record.label})
                return
            metrics.ERRORS.labels(op="status").inc()
            log.warning("status write failed", extra={"policy": record.label, "error": str(exc)})
            self.retry(record.key)
            return
        self.statuses[record.uid] = status
        self.versions[record.uid] = (record.version, made)
        metrics.STATUS_WRITES.inc()
        ready = _ready(status)
        before = _ready(previous) if previous else None
        if (
            ready is not None
            and ready.reason in ("Invalid", "NodeErrors")
            and (before is None or (before.reason, before.message) != (ready.reason, ready.message))
        ):
            try:
                await self.kube.event(
                    record.kind, record.namespace, record.name, record.uid,
                    ready.reason, ready.message, self.component,
                )  # fmt: skip
            except WRITE_ERRORS as exc:
                log.warning("event not posted", extra={"policy": record.label, "error": str(exc)})


def _dump(status: PolicyStatus) -> dict[str, Any]:
    dumped: dict[str, Any] = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped


def _ready(status: PolicyStatus) -> Any:
    return next((c for c in status.conditions or [] if c.type == READY), None)
