"""Status writing: each affected policy's status from its targets, bundles and reports.

A status is written only when it differs from what is stored (`policy_status`
is pure), at most every COUNTS_INTERVAL when only its counts changed, with an
Event for `Invalid`, `SensorSilent` and `NodeErrors` once per distinct message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from stockade.operator import metrics
from stockade.operator.bundle_writer import WRITE_ERRORS, BundleWriter
from stockade.operator.heartbeats import Heartbeats
from stockade.operator.kube import Kube
from stockade.operator.ledger import SELECTOR as COUNTS_SELECTOR
from stockade.operator.ledger import Ledger
from stockade.operator.objects import PolicyKey, PolicyRecord
from stockade.operator.status import READY, SENSOR_SILENT, policy_status
from stockade.operator.targeting import Indexes, Targeting, first
from stockade.policy.reports import NodePolicyReport
from stockade.policy.resources import PolicyStatus

log = logging.getLogger("stockade.operator")


COUNTS_INTERVAL = 5.0  # seconds: a policy's status changing only in counts, at most this often


def current_reports(ix: Indexes) -> dict[str, NodePolicyReport]:
    """node → its report, for nodes that exist; a report naming another Node UID is left
    from an earlier Node of that name, and ignored."""
    out: dict[str, NodePolicyReport] = {}
    for node, store in ix.reports.items():
        report = next(iter(store), None)
        node_uid = first(ix.nodes, node)
        if report is not None and node_uid is not None and report.node_uid in (None, node_uid):
            out[node] = report
    return out


class StatusWriter:
    """Owns the statuses the operator wrote (by policy uid), as a watch event may bring an
    older copy back, and the counts (`ledger`).

    `retry(key, seconds)`: called when a policy's status is to be written again later
    (its write failed, or only its counts changed since a recent write).
    """

    def __init__(
        self,
        kube: Kube,
        component: str,
        retry: Callable[[PolicyKey, float], None],
        heartbeats: Heartbeats,
    ) -> None:
        self.kube = kube
        self.component = component
        self.retry = retry
        self.heartbeats = heartbeats  # which nodes are silent: `update`d by the reconciler
        self.ledger = Ledger()
        self.statuses: dict[str, PolicyStatus] = {}
        # uid → (the policy's resourceVersion a write was based on, the one it made)
        self.versions: dict[str, tuple[str, str]] = {}
        self.written_at: dict[str, float] = {}  # uid → time.monotonic() of the last write

    async def load(self) -> None:
        """The counts as stored (the first pass)."""
        self.ledger = Ledger.loaded(
            {
                cm["metadata"]["name"]: (cm.get("data") or {}, cm["metadata"]["resourceVersion"])
                for cm in await self.kube.configmaps(COUNTS_SELECTOR)
            }
        )

    def count(self, ix: Indexes, nodes: Iterable[str], policies: set[str] | None) -> set[str]:
        """Fold the reports of `nodes` in and retire the nodes gone; `policies`: the uids of
        all policies, to forget the others (a full pass, or one after a deletion). Returns
        the policies concerned."""
        reports = current_reports(ix)
        changed: set[str] = set()
        for node in nodes:
            report = reports.get(node)
            node_uid = first(ix.nodes, node)
            if report is not None and node_uid is not None:
                changed |= self.ledger.fold(node, node_uid, report)
        changed |= self.ledger.retire({u for store in ix.nodes.values() for u in store})
        if policies is not None:
            self.ledger.forget(policies)
        return changed

    async def write(
        self,
        keys: Iterable[PolicyKey],
        records: Mapping[PolicyKey, PolicyRecord],
        ix: Indexes,
        targeting: Targeting,
        bundles: BundleWriter,
    ) -> None:
        reports = current_reports(ix)
        now = datetime.now(UTC).replace(microsecond=0)
        live = {r.uid for r in records.values()}
        tables: list[dict[str, Any]] = [self.statuses, self.versions, self.written_at]
        for table in tables:
            for gone in table.keys() - live:
                del table[gone]
        writes = []
        for key in sorted(keys):
            record = records.get(key)
            if record is None:
                continue
            previous = self.statuses.get(record.uid, record.status)
            targeted = sorted(targeting.nodes_of(key))
            status = policy_status(
                record,
                targeted=targeted,
                bundled={
                    n for n in targeted if bundles.holds(n, key, record.uid, record.generation)
                },
                node_problems={n: p for n in targeted if (p := bundles.problem(n, key))},
                reports=reports,
                silent=self.heartbeats.silent,
                counts=self.ledger.counts(record.uid),
                previous=previous,
                now=now,
            )
            if previous is not None:
                before, after = _dump(previous), _dump(status)
                if before == after:
                    self.statuses[record.uid] = previous
                    continue
                wait = self.written_at.get(record.uid, -COUNTS_INTERVAL) + COUNTS_INTERVAL
                wait -= time.monotonic()
                if wait > 0 and {**before, "counts": None} == {**after, "counts": None}:
                    self.retry(key, wait)  # only counts changed, and were written just now
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
            self.retry(record.key, 2.0)
            return
        self.written_at[record.uid] = time.monotonic()
        self.statuses[record.uid] = status
        self.versions[record.uid] = (record.version, made)
        metrics.STATUS_WRITES.inc()
        ready = _ready(status)
        before = _ready(previous) if previous else None
        if (
            ready is not None
            and ready.reason in ("Invalid", SENSOR_SILENT, "NodeErrors")
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
