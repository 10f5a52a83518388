"""The reconciler: kopf's indexes in, bundle ConfigMaps and policy statuses out.

Watch handlers only mark what changed (nodes, policies, reports) and wake the
loop; the loop waits until changes pause (`Debouncer`), then handles the
whole batch: which policies each node needs (`Targeting`), its bundle
(`BundleWriter`), the statuses of the policies concerned (`StatusWriter`).
Nothing is written that equals what is stored, so a restart or a repeated
pass writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from stockade.operator import metrics
from stockade.operator.bundle_writer import BundleWriter, Plan
from stockade.operator.debounce import Debouncer
from stockade.operator.heartbeats import DEFAULT_AFTER, Heartbeats
from stockade.operator.kube import Kube
from stockade.operator.objects import PolicyKey
from stockade.operator.status_writer import StatusWriter, current_reports
from stockade.operator.targeting import Indexes, Targeting, first

log = logging.getLogger("stockade.operator")


@dataclass
class Options:
    namespace: str
    cluster: str = ""
    quiet: float = 0.1
    max_delay: float = 1.0
    resync: float = 300.0
    sensor_silent_after: float = DEFAULT_AFTER
    component: str = "stockade-operator"


@dataclass
class Reconciler:
    kube: Kube
    options: Options
    ix: Indexes | None = None
    full: bool = True
    synced: bool = False
    dirty_nodes: set[str] = field(default_factory=set)
    dirty_policies: set[PolicyKey] = field(default_factory=set)
    dirty_reports: set[str] = field(default_factory=set)
    handled: dict[PolicyKey, tuple[str, int]] = field(default_factory=dict)
    pods_listed: bool = False  # the pod watch's first list is in (`pods_changed`)
    targeting: Targeting = field(default_factory=Targeting)
    bundles: BundleWriter = field(init=False)
    status: StatusWriter = field(init=False)
    debounce: Debouncer = field(init=False)
    silence_check: asyncio.TimerHandle | None = None  # wakes the loop when a sensor goes silent

    def __post_init__(self) -> None:
        self.bundles = BundleWriter(
            self.kube,
            self.options.namespace,
            self.options.cluster,
            targets=self.targeting.of_node,
            retry=self.node_changed,
        )
        self.status = StatusWriter(
            self.kube,
            self.options.component,
            retry=self._status_later,
            heartbeats=Heartbeats(self.options.sensor_silent_after),
        )
        self.debounce = Debouncer(self.options.quiet, self.options.max_delay)

    # --- called by the watch handlers: cheap, no I/O --------------------------

    def attach(self, ix: Indexes) -> None:
        self.ix = ix

    def node_changed(self, node: str) -> None:
        self.dirty_nodes.add(node)
        self.debounce.wake()

    def pods_changed(self, nodes: set[str], listed: bool = False) -> None:
        """From the pod watch: these nodes' pods changed; `listed`: a full list is in."""
        self.dirty_nodes |= nodes
        if listed and not self.pods_listed:
            self.pods_listed = True
        self.debounce.wake()

    def namespace_changed(self, namespace: str) -> None:
        if self.ix is not None:
            self.dirty_nodes.update(self.ix.pod_nodes.get(namespace, {}))
            self.debounce.wake()

    def policy_changed(self, key: PolicyKey, uid: str, generation: int, deleted: bool) -> None:
        """Only a new generation matters: the operator's own status writes don't bump it."""
        if deleted or self.handled.get(key) != (uid, generation):
            self.dirty_policies.add(key)
            self.debounce.wake()

    def report_changed(self, node: str) -> None:
        self.dirty_reports.add(node)
        self.debounce.wake()

    def _status_later(self, key: PolicyKey, seconds: float) -> None:
        self.dirty_policies.add(key)
        self.handled.pop(key, None)
        self.debounce.later(seconds)

    def _check_silence_at(self, due: datetime | None) -> None:
        """Wake the loop when the next heartbeat crosses the threshold: no event says so."""
        if self.silence_check is not None:
            self.silence_check.cancel()
            self.silence_check = None
        if due is not None:
            seconds = max(0.0, (due - datetime.now(UTC)).total_seconds())
            self.silence_check = asyncio.get_running_loop().call_later(seconds, self.debounce.wake)

    # --- the loop --------------------------------------------------------------

    async def run(self) -> None:
        """Debounce, then reconcile; forever (cancelled at operator exit)."""
        loop = asyncio.get_running_loop()
        resync_at = loop.time() + self.options.resync
        while True:
            if not await self.debounce.settle(max(0.0, resync_at - loop.time())):
                self.full = True
            if self.ix is None or not self.pods_listed:  # kopf or the pod list not ready yet
                continue
            if self.full:
                resync_at = loop.time() + self.options.resync
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile failed; retrying everything in 5 s")
                metrics.ERRORS.labels(op="reconcile").inc()
                self.full = True
                self.debounce.later(5.0)

    async def reconcile(self) -> None:
        ix = self.ix
        assert ix is not None
        started = time.monotonic()
        metrics.RECONCILES.inc()
        full, self.full = self.full, False
        dirty_policies, self.dirty_policies = self.dirty_policies, set()
        dirty_nodes, self.dirty_nodes = self.dirty_nodes, set()
        dirty_reports, self.dirty_reports = self.dirty_reports, set()

        records = {r.key: r for store in ix.policies.values() for r in store}
        by_uid = {r.uid: r.key for r in records.values()}
        targeting = self.targeting
        if full:
            await self.bundles.load()
            if not self.synced:
                await self.status.load()
            nodes = set(ix.nodes) | set(ix.pods) | set(self.bundles.written)
            nodes |= set(targeting.targets)
            status_keys = set(records) | dirty_policies
        else:
            nodes = set(dirty_nodes)
            for key in dirty_policies:
                nodes |= targeting.candidate_nodes(ix, key) | targeting.nodes_of(key)
            status_keys = set(dirty_policies)
            for node in dirty_reports:
                status_keys |= targeting.of_node(node)
                report = first(ix.reports, node)
                for counters in report.policies if report else []:
                    if counters.uid in by_uid:
                        status_keys.add(by_uid[counters.uid])
        for key in dirty_policies:
            if key in records:
                self.handled[key] = (records[key].uid, records[key].generation)
            else:
                self.handled.pop(key, None)

        # Writes start while later nodes are still compiled (the client runs them in
        # threads); yielding every few nodes lets them, and kopf's watches, make progress.
        plans: list[Plan] = []
        writes: list[asyncio.Task[None]] = []
        for count, node in enumerate(sorted(nodes), 1):
            inputs = targeting.inputs(ix, node)
            status_keys |= targeting.assign(
                node, frozenset(r.key for r in inputs.policies) if inputs else frozenset()
            )
            plan = self.bundles.plan(node, inputs, status_keys)
            plans.append(plan)
            if plan.writes:
                writes.append(asyncio.create_task(self.bundles.apply(plan, status_keys)))
            if count % 16 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*writes)
        deleted = any(key not in records for key in dirty_policies)
        counted = self.status.count(
            ix,
            ix.reports.keys() if full else dirty_reports,
            {r.uid for r in records.values()} if full or deleted else None,
        )
        status_keys |= {by_uid[uid] for uid in counted if uid in by_uid}
        if not await self.status.ledger.flush(self.kube):
            self.debounce.later(2.0)  # the counts not written are written then
        heartbeats = self.status.heartbeats
        for node in heartbeats.update(current_reports(ix), datetime.now(UTC)):
            status_keys |= targeting.of_node(node)
        await self.status.write(status_keys, records, ix, targeting, self.bundles)
        self._check_silence_at(heartbeats.due)
        if not self.synced:
            self.synced = True
            metrics.SYNCED.set(1)
        log.info(
            "reconciled",
            extra={
                "full": full,
                "nodes": len(nodes),
                "writes": sum(1 for p in plans if p.writes),
                "statuses": len(status_keys),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
