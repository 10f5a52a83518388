"""The reconciler: kopf's indexes in, bundle ConfigMaps and policy statuses out.

Watch handlers only mark what changed (nodes, policies, reports) and wake the
loop; the loop waits until changes pause for `quiet` seconds (at most
`max_delay` after the first), then handles the whole batch: a rollout of 500
pods on a node is one compile and at most one write. Nothing is written that
equals what is stored (bundle hash, owner, status), so a restart or a repeated
pass writes nothing. A node whose bundle can't be compiled keeps its previous
one; an invalid policy is left out of every bundle.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from stockade.operator import metrics
from stockade.operator.bundles import MAX_PAYLOAD_BYTES, configmap, configmap_name, fit
from stockade.operator.kube import Kube
from stockade.operator.objects import PodRef, PolicyKey, PolicyRecord
from stockade.operator.status import (
    BUNDLE_TOO_LARGE,
    COMPILING,
    READY,
    WRITE_FAILED,
    NodeProblem,
    policy_status,
    update_ledger,
)
from stockade.policy.compiler import Bundle, CompileError, applicable, compile_bundle
from stockade.policy.reports import NodePolicyReport
from stockade.policy.resources import CounterLedger, PolicyStatus

log = logging.getLogger("stockade.operator")
# What a write can fail with: the apiserver's refusal, or no answer from it.
WRITE_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)
BACKOFF_FIRST = 1.0  # seconds before the first retry of a failed bundle write
BACKOFF_CAP = 30.0


def backoff(attempts: int) -> float:
    """Seconds before retrying after `attempts` failures: doubling up to the cap, with
    jitter (the upper half of the interval) so many failing nodes don't retry in step."""
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** (attempts - 1)) * random.uniform(0.5, 1.0)


@dataclass
class Indexes:
    """kopf's indexes (kopf updates these objects in place), and the pods (`pods.PodIndex`)."""

    pods: Mapping[str, Mapping[tuple[str, str], PodRef]]  # node → its pods (bound, not finished)
    pod_nodes: Mapping[str, Mapping[str, int]]  # namespace → nodes with its pods (and how many)
    namespaces: kopf.Index[str, dict[str, str]]  # name → labels
    nodes: kopf.Index[str, str]  # name → uid
    policies: kopf.Index[str, PolicyRecord]  # namespace ("" = cluster-scoped) → policies
    reports: kopf.Index[str, NodePolicyReport]  # node → its sensor's report


@dataclass(frozen=True)
class Written:
    """A node's bundle as stored: `policies` is None when only read back (not compiled)."""

    name: str
    hash: str
    owner_uid: str
    cluster: str
    policies: Mapping[PolicyKey, tuple[str, int]] | None = None  # key → (uid, generation)


@dataclass
class Options:
    namespace: str
    cluster: str = ""
    peering: str | None = None  # None: standalone, always writes
    identity: str = ""
    priority: int = 0
    quiet: float = 0.1
    max_delay: float = 1.0
    resync: float = 300.0
    component: str = "stockade-operator"


def _first(stores: Mapping[str, Any], key: str, default: Any = None) -> Any:
    store = stores.get(key)
    return next(iter(store), default) if store is not None else default


@dataclass
class _Plan:
    """One pass's work on a node, decided synchronously before the writes run."""

    node: str
    write: dict[str, Any] | None = None
    written: Written | None = None
    delete: str | None = None
    bytes: int = 0
    exists: bool = False  # a bundle is stored for the node already


@dataclass
class _Retry:
    """A node whose last bundle write failed: what to write, when."""

    attempts: int
    due: float  # time.monotonic()
    plan: _Plan


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
    targets: dict[str, frozenset[PolicyKey]] = field(default_factory=dict)
    policy_nodes: dict[PolicyKey, set[str]] = field(default_factory=lambda: defaultdict(set))
    inputs: dict[str, Hashable] = field(default_factory=dict)
    written: dict[str, Written] = field(default_factory=dict)
    problems: dict[str, NodeProblem] = field(default_factory=dict)  # by node
    refused: dict[str, dict[PolicyKey, NodeProblem]] = field(default_factory=dict)  # by node
    retries: dict[str, _Retry] = field(default_factory=dict)  # by node
    sizes: dict[str, dict[Hashable, int]] = field(default_factory=dict)  # by node: `fit`'s
    handled: dict[PolicyKey, tuple[str, int]] = field(default_factory=dict)
    statuses: dict[str, PolicyStatus] = field(default_factory=dict)  # by policy uid
    pods_listed: bool = False  # the pod watch's first list is in (`pods_changed`)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _leader_checked: tuple[float, bool] = (0.0, False)

    # --- called by the watch handlers: cheap, no I/O --------------------------

    def attach(self, ix: Indexes) -> None:
        self.ix = ix

    def node_changed(self, node: str) -> None:
        self.dirty_nodes.add(node)
        self._wake.set()

    def pods_changed(self, nodes: set[str], listed: bool = False) -> None:
        """From the pod watch: these nodes' pods changed; `listed`: a full list is in."""
        self.dirty_nodes |= nodes
        if listed and not self.pods_listed:
            self.pods_listed = True
        self._wake.set()

    def namespace_changed(self, namespace: str) -> None:
        if self.ix is not None:
            self.dirty_nodes.update(self.ix.pod_nodes.get(namespace, {}))
            self._wake.set()

    def policy_changed(self, key: PolicyKey, uid: str, generation: int, deleted: bool) -> None:
        """Only a new generation matters: the operator's own status writes don't bump it."""
        if deleted or self.handled.get(key) != (uid, generation):
            self.dirty_policies.add(key)
            self._wake.set()

    def report_changed(self, node: str) -> None:
        self.dirty_reports.add(node)
        self._wake.set()

    # --- the loop --------------------------------------------------------------

    async def run(self) -> None:
        """Debounce, then reconcile; forever (cancelled at operator exit)."""
        loop = asyncio.get_running_loop()
        resync_at = loop.time() + self.options.resync
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, resync_at - loop.time()))
            except TimeoutError:
                self.full = True
            first = loop.time()
            while True:
                self._wake.clear()
                left = first + self.options.max_delay - loop.time()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), min(self.options.quiet, left))
                except TimeoutError:
                    break
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
                self._later(5.0)

    def _later(self, seconds: float) -> None:
        asyncio.get_running_loop().call_later(seconds, self._wake.set)

    async def is_leader(self) -> bool:
        """kopf's own rule, checked before writing: no live peer has a priority >= ours.

        kopf pauses the watches of a replica that isn't the leader; this also
        stops its reconciler from flushing what it had queued before the pause.
        """
        if self.options.peering is None:
            return True
        checked_at, leader = self._leader_checked
        if time.monotonic() - checked_at < 2.0:
            return leader
        now = datetime.now(UTC)
        leader = True
        for identity, peer in (await self.kube.peers(self.options.peering)).items():
            if identity == self.options.identity or not isinstance(peer, dict):
                continue
            seen = datetime.fromisoformat(str(peer.get("lastseen")))
            alive = seen + timedelta(seconds=int(peer.get("lifetime", 60))) > now
            if alive and int(peer.get("priority", 0)) >= self.options.priority:
                leader = False
        self._leader_checked = (time.monotonic(), leader)
        metrics.LEADER.set(1 if leader else 0)
        return leader

    async def reconcile(self) -> None:
        ix = self.ix
        assert ix is not None
        if not await self.is_leader():
            log.info("not the leader: writing nothing", extra={"peering": self.options.peering})
            self.full = True
            self._later(5.0)
            return
        started = time.monotonic()
        metrics.RECONCILES.inc()
        full, self.full = self.full, False
        dirty_policies, self.dirty_policies = self.dirty_policies, set()
        dirty_nodes, self.dirty_nodes = self.dirty_nodes, set()
        dirty_reports, self.dirty_reports = self.dirty_reports, set()

        records = {r.key: r for store in ix.policies.values() for r in store}
        by_uid = {r.uid: r.key for r in records.values()}
        if full:
            if not self.synced:
                stored = await self.kube.bundle_hashes()
                self.written = {n: Written(*stored[n]) for n in stored}
            nodes = set(ix.nodes) | set(ix.pods) | set(self.written) | set(self.targets)
            status_keys = set(records) | dirty_policies
        else:
            nodes = set(dirty_nodes)
            for key in dirty_policies:
                nodes |= self._candidate_nodes(key) | self.policy_nodes.get(key, set())
            status_keys = set(dirty_policies)
            for node in dirty_reports:
                status_keys |= self.targets.get(node, frozenset())
                report = _first(ix.reports, node)
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
        plans: list[_Plan] = []
        writes: list[asyncio.Task[None]] = []
        for count, node in enumerate(sorted(nodes), 1):
            plan = self._plan(node, status_keys)
            plans.append(plan)
            if plan.write is not None or plan.delete is not None:
                writes.append(asyncio.create_task(self._apply(plan, status_keys)))
            if count % 16 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*writes)
        await self._statuses(status_keys, records)
        if not self.synced:
            self.synced = True
            metrics.SYNCED.set(1)
        log.info(
            "reconciled",
            extra={
                "full": full,
                "nodes": len(nodes),
                "writes": sum(1 for p in plans if p.write or p.delete),
                "statuses": len(status_keys),
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    def _candidate_nodes(self, key: PolicyKey) -> set[str]:
        """Nodes where a policy could apply: where its namespace has pods, or all."""
        assert self.ix is not None
        namespace = key[1]
        if namespace:
            return set(self.ix.pod_nodes.get(namespace, {}))
        return set(self.ix.pods)

    # --- bundles ----------------------------------------------------------------

    def _set_targets(
        self, node: str, targets: frozenset[PolicyKey], status_keys: set[PolicyKey]
    ) -> None:
        before = self.targets.get(node, frozenset())
        for key in before - targets:
            self.policy_nodes[key].discard(node)
            if not self.policy_nodes[key]:
                del self.policy_nodes[key]
        for key in targets - before:
            self.policy_nodes[key].add(node)
        status_keys |= before ^ targets
        if targets:
            self.targets[node] = targets
        else:
            self.targets.pop(node, None)

    def _plan(self, node: str, status_keys: set[PolicyKey]) -> _Plan:
        assert self.ix is not None
        plan = _Plan(node)
        node_uid = _first(self.ix.nodes, node)
        if node_uid is None:  # the node is gone: so is its bundle
            self._set_targets(node, frozenset(), status_keys)
            self.inputs.pop(node, None)
            self.problems.pop(node, None)
            self.sizes.pop(node, None)
            self._set_refused(node, {}, status_keys)
            gone = self.written.get(node)
            if gone is not None and not self._waiting(node):
                del self.written[node]
                plan.delete = gone.name
                plan.written = gone
                status_keys |= set(gone.policies or ())
            status_keys |= {
                key
                for key, s in self._stored_statuses().items()
                if s.ledger and node in s.ledger.nodes
            }
            return plan
        pods = [p.pod() for p in self.ix.pods.get(node, {}).values()]
        namespaces = sorted({p.namespace for p in pods})
        # Only known namespaces have labels: an unknown one is selected by no
        # namespaceSelector until its watch event comes (which marks its nodes).
        labels = {
            ns: dict(known)
            for ns in namespaces
            if (known := _first(self.ix.namespaces, ns)) is not None
        }
        # A ContainerPolicy can only select pods of its own namespace.
        candidates = {
            id(r.document): r
            for ns in ["", *namespaces]
            for r in self.ix.policies.get(ns, ())
            if r.document is not None
        }
        chosen = [
            candidates[id(d)]
            for d in applicable(
                [r.document for r in candidates.values() if r.document is not None], pods, labels
            )
        ]
        self._set_targets(node, frozenset(r.key for r in chosen), status_keys)
        resolves_namespaces = any(
            r.document is not None and r.document.scope.namespace_selector is not None
            for r in chosen
        )
        # Namespace labels matter to the bundle only through a namespaceSelector.
        labels_key = (
            tuple(
                (ns, tuple(sorted(labels[ns].items())) if ns in labels else None)
                for ns in namespaces
            )
            if resolves_namespaces
            else None
        )
        memo: Hashable = (
            node_uid,
            tuple(sorted((*r.key, r.uid, r.generation) for r in chosen)),
            labels_key,
        )
        failed = self.problems.get(node)
        if self.inputs.get(node) == memo and (failed is None or failed.reason == WRITE_FAILED):
            retry = self.retries.get(node)
            if retry is not None and not self._waiting(node):
                return retry.plan  # the same write again, once its back-off is over
            return plan
        self.inputs[node] = memo
        compile_started = time.perf_counter()
        cluster = self.options.cluster

        def build(records: Sequence[PolicyRecord]) -> tuple[Bundle, dict[str, Any]]:
            # `records` and `labels` are already the node's: no need to pass (and re-check) pods.
            documents = [r.document for r in records if r.document is not None]
            bundle = compile_bundle(documents, node=node, namespace_labels=labels)
            return bundle, configmap(bundle, node, node_uid, self.options.namespace, cluster)

        try:
            fitted = fit(
                sorted(chosen, key=lambda r: r.fit_order),
                build,
                key=lambda records: (
                    labels_key,
                    tuple((*r.key, r.uid, r.generation) for r in records),
                ),
                sizes=self.sizes.get(node, {}),
            )
        except CompileError as exc:
            self.problems[node] = NodeProblem(COMPILING, f"its bundle can't be compiled: {exc}")
            log.warning("bundle not compiled", extra={"node": node, "error": str(exc)})
            status_keys |= self.targets.get(node, frozenset())
            return plan
        metrics.COMPILE_SECONDS.observe(time.perf_counter() - compile_started)
        self.sizes[node] = fitted.sizes
        if failed is not None and failed.reason == COMPILING:
            del self.problems[node]
            status_keys |= self.targets.get(node, frozenset())
        self._set_refused(
            node,
            {
                r.key: NodeProblem(
                    BUNDLE_TOO_LARGE,
                    f"left out of its bundle: {with_it} bytes with this policy, {without}"
                    f" without; a bundle ConfigMap holds at most {MAX_PAYLOAD_BYTES} bytes"
                    " (room goes to cluster policies first, then the oldest)",
                )
                for r, with_it, without in fitted.left_out
            },
            status_keys,
        )
        if fitted.left_out:
            log.warning(
                "policies left out of a bundle too large",
                extra={"node": node, "policies": [r.label for r, _, _ in fitted.left_out]},
            )
        bundle = fitted.bundle
        held = {
            (p["kind"], p["namespace"] or "", p["name"]): (p["uid"], p["generation"])
            for p in bundle["policies"]
        }
        written = Written(configmap_name(node), bundle["hash"], node_uid, cluster, held)
        before = self.written.get(node)
        if before is not None and (before.hash, before.owner_uid, before.cluster) == (
            written.hash,
            written.owner_uid,
            written.cluster,
        ):
            self.written[node] = written
            self._write_done(node, status_keys)
            if before.policies is None:
                status_keys |= set(held)
            return plan
        status_keys |= set(held) | set(before.policies or ()) if before else set(held)
        plan.write = fitted.body
        plan.written = written
        plan.exists = before is not None
        plan.bytes = fitted.bytes
        retry = self.retries.get(node)
        if retry is not None and self._waiting(node):
            retry.plan = plan  # written when the node's back-off is over
            return _Plan(node)
        return plan

    def _set_refused(
        self, node: str, refused: dict[PolicyKey, NodeProblem], status_keys: set[PolicyKey]
    ) -> None:
        before = self.refused.get(node, {})
        status_keys |= {
            k for k in before.keys() | refused.keys() if before.get(k) != refused.get(k)
        }
        if refused:
            self.refused[node] = refused
        else:
            self.refused.pop(node, None)

    def _waiting(self, node: str) -> bool:
        """Whether the node's bundle write failed and its back-off isn't over yet."""
        retry = self.retries.get(node)
        return retry is not None and time.monotonic() < retry.due

    def _write_done(self, node: str, status_keys: set[PolicyKey]) -> None:
        self.retries.pop(node, None)
        failed = self.problems.get(node)
        if failed is not None and failed.reason == WRITE_FAILED:
            del self.problems[node]
            status_keys |= self.targets.get(node, frozenset())

    async def _apply(self, plan: _Plan, status_keys: set[PolicyKey]) -> None:
        try:
            if plan.delete is not None:
                await self.kube.delete_configmap(plan.delete)
                metrics.BUNDLE_WRITES.labels(op="delete").inc()
                log.info("bundle deleted", extra={"node": plan.node, "configmap": plan.delete})
            elif plan.write is not None and plan.written is not None:
                await self.kube.put_configmap(plan.write, exists=plan.exists)
                self.written[plan.node] = plan.written
                metrics.BUNDLE_WRITES.labels(op="write").inc()
                metrics.BUNDLE_BYTES.observe(plan.bytes)
                log.info(
                    "bundle written",
                    extra={"node": plan.node, "hash": plan.written.hash, "bytes": plan.bytes},
                )
        except WRITE_ERRORS as exc:
            self._write_failed(plan, exc, status_keys)
        else:
            self._write_done(plan.node, status_keys)

    def _write_failed(self, plan: _Plan, exc: Exception, status_keys: set[PolicyKey]) -> None:
        """Only this node waits: its next attempt after an exponential back-off (jittered)."""
        metrics.ERRORS.labels(op="bundle").inc()
        if plan.delete is not None and plan.written is not None:
            self.written.setdefault(plan.node, plan.written)  # still there: delete it again
        retry = self.retries.get(plan.node)
        attempts = retry.attempts + 1 if retry is not None else 1
        delay = backoff(attempts)
        self.retries[plan.node] = _Retry(attempts, time.monotonic() + delay, plan)
        why = (
            f"the apiserver refused it ({exc.status} {exc.reason})"
            if isinstance(exc, ApiException)
            else f"the apiserver wasn't reached ({type(exc).__name__})"
        )
        log.warning(
            "bundle write failed",
            extra={"node": plan.node, "error": str(exc), "attempts": attempts, "retry": delay},
        )
        self.problems[plan.node] = NodeProblem(WRITE_FAILED, f"writing its bundle failed: {why}")
        status_keys |= self.targets.get(plan.node, frozenset())
        asyncio.get_running_loop().call_later(delay, self.node_changed, plan.node)

    # --- statuses -----------------------------------------------------------------

    def _stored_statuses(self) -> dict[PolicyKey, PolicyStatus]:
        assert self.ix is not None
        out = {}
        for store in self.ix.policies.values():
            for r in store:
                status = self.statuses.get(r.uid, r.status)
                if status is not None:
                    out[r.key] = status
        return out

    async def _statuses(
        self, keys: Iterable[PolicyKey], records: Mapping[PolicyKey, PolicyRecord]
    ) -> None:
        assert self.ix is not None
        reports: dict[str, NodePolicyReport] = {}
        for node, store in self.ix.reports.items():
            report = next(iter(store), None)
            if report is not None and node in self.ix.nodes:
                reports[node] = report
        existing = set(self.ix.nodes)
        now = datetime.now(UTC).replace(microsecond=0)
        writes = []
        for key in sorted(keys):
            record = records.get(key)
            if record is None:
                continue
            previous = self.statuses.get(record.uid, record.status)
            targeted = sorted(self.policy_nodes.get(key, ()))
            bundled = {
                n
                for n in targeted
                if (w := self.written.get(n)) is not None
                and w.policies is not None
                and w.policies.get(key) == (record.uid, record.generation)
            }
            ledger = update_ledger(
                previous.ledger if previous and previous.ledger else CounterLedger(),
                record.uid,
                reports,
                existing,
            )
            status = policy_status(
                record,
                targeted=targeted,
                bundled=bundled,
                node_problems={
                    n: p
                    for n in targeted
                    if (p := self.refused.get(n, {}).get(key) or self.problems.get(n))
                },
                reports=reports,
                ledger=ledger,
                previous=previous,
                now=now,
            )
            if previous is not None and _dump(previous) == _dump(status):
                self.statuses[record.uid] = previous
                continue
            writes.append(self._write_status(record, status, previous))
        await asyncio.gather(*writes)

    async def _write_status(
        self, record: PolicyRecord, status: PolicyStatus, previous: PolicyStatus | None
    ) -> None:
        try:
            await self.kube.put_policy_status(
                record.kind, record.namespace, record.name, _dump(status)
            )
        except WRITE_ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:  # deleted meanwhile
                return
            metrics.ERRORS.labels(op="status").inc()
            log.warning("status write failed", extra={"policy": record.label, "error": str(exc)})
            self.dirty_policies.add(record.key)
            self.handled.pop(record.key, None)
            self._later(2.0)
            return
        self.statuses[record.uid] = status
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
                    ready.reason, ready.message, self.options.component,
                )  # fmt: skip
            except WRITE_ERRORS as exc:
                log.warning("event not posted", extra={"policy": record.label, "error": str(exc)})


def _dump(status: PolicyStatus) -> dict[str, Any]:
    dumped: dict[str, Any] = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped


def _ready(status: PolicyStatus) -> Any:
    return next((c for c in status.conditions or [] if c.type == READY), None)
