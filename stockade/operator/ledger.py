"""Counts that never go backwards nor double, kept per Node UID in the operator's ConfigMaps.

A sensor's counters are cumulative for one sensor instance. Per Node (by
UID, never by name: a Node deleted and created again under its name is
another node) the operator keeps, for each policy, the instance it last saw,
the last counters per generation and a `base` of what earlier instances and
generations counted: ConfigMap `stockade-counts-<node uid>`. A Node that is
gone has its shares added to `stockade-counts-retired` (per policy, with the
UIDs retired whose ConfigMap may still exist, so a crash between the two
writes never counts a node twice) and its ConfigMap deleted. A policy's
`status.counts` is its retired total plus every node's share: its size
doesn't depend on the number of nodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import Field, ValidationError

from stockade.operator import metrics
from stockade.operator.bundle_writer import WRITE_ERRORS
from stockade.operator.bundles import COMPONENT_LABEL, MANAGED_BY, NODE_ANNOTATION
from stockade.operator.kube import Kube
from stockade.policy.model import _Model
from stockade.policy.reports import NodePolicyReport
from stockade.policy.resources import CountsStatus

log = logging.getLogger("stockade.operator")
PREFIX = "stockade-counts-"
RETIRED = f"{PREFIX}retired"
KEY = "counts.json"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},{COMPONENT_LABEL}=counts"


class NodeCounters(_Model):
    """One node's share of one policy's counts, as last folded in."""

    instance: str  # the sensor instance the counters below came from
    base: CountsStatus = CountsStatus()  # earlier instances and generations
    generations: dict[str, CountsStatus] = Field(default={})  # last seen, per generation


def add(a: CountsStatus, b: CountsStatus, sign: int = 1) -> CountsStatus:
    return CountsStatus(
        blocked=a.blocked + sign * b.blocked,
        alerted=a.alerted + sign * b.alerted,
        logged=a.logged + sign * b.logged,
    )


def total(counts: Iterable[CountsStatus]) -> CountsStatus:
    out = CountsStatus()
    for c in counts:
        out = add(out, c)
    return out


def share(entry: NodeCounters) -> CountsStatus:
    return add(entry.base, total(entry.generations.values()))


def fold_report(
    entry: NodeCounters | None, report: NodePolicyReport, uid: str
) -> NodeCounters | None:
    """One node's entry for policy `uid` after reading the node's report.

    A new sensor instance, or a counter lower than last seen, means the
    counters restarted: what was seen moves into `base`. Generations that left
    the report move into `base` too, so the entry stays small.
    """
    current = {
        str(c.generation): CountsStatus(blocked=c.blocked, alerted=c.alerted, logged=c.logged)
        for c in report.policies
        if c.uid == uid
    }
    if entry is None:
        return (
            NodeCounters(instance=report.sensor.instance_id, generations=current)
            if current
            else None
        )
    base, seen = entry.base, dict(entry.generations)
    if entry.instance != report.sensor.instance_id:
        base, seen = add(base, total(seen.values())), {}
    for generation, last in list(seen.items()):
        now = current.get(generation)
        if (
            now is None
            or now.blocked < last.blocked
            or now.alerted < last.alerted
            or now.logged < last.logged
        ):
            base = add(base, last)
            del seen[generation]
    return NodeCounters(
        instance=report.sensor.instance_id, base=base, generations={**seen, **current}
    )


@dataclass
class NodeLedger:
    node: str  # the Node's name, for people reading the ConfigMap
    policies: dict[str, NodeCounters] = field(default_factory=dict)  # policy uid → entry
    version: str | None = None  # the ConfigMap's resourceVersion; None: not stored


@dataclass
class Ledger:
    nodes: dict[str, NodeLedger] = field(default_factory=dict)  # by Node UID
    retired: dict[str, CountsStatus] = field(default_factory=dict)  # policy uid → counts
    retiring: set[str] = field(default_factory=set)  # Node UIDs in `retired`, ConfigMap left
    retired_version: str | None = None
    totals: dict[str, CountsStatus] = field(default_factory=dict)  # policy uid → counts
    dirty: set[str] = field(default_factory=set)  # Node UIDs to write ("" : the retired one)

    def counts(self, policy: str) -> CountsStatus:
        return self.totals.get(policy, CountsStatus())

    def _move(self, policy: str, before: CountsStatus, after: CountsStatus) -> bool:
        if before == after:
            return False
        self.totals[policy] = add(add(self.counts(policy), before, -1), after)
        return True

    def fold(self, node: str, node_uid: str, report: NodePolicyReport) -> set[str]:
        """Fold the node's report in; returns the policies whose counts changed."""
        ledger = self.nodes.setdefault(node_uid, NodeLedger(node))
        changed: set[str] = set()
        uids = {c.uid for c in report.policies} | set(ledger.policies)
        for policy in uids:
            before = ledger.policies.get(policy)
            after = fold_report(before, report, policy)
            if after == before or after is None:
                continue
            ledger.policies[policy] = after
            self.dirty.add(node_uid)
            old = share(before) if before is not None else CountsStatus()
            if self._move(policy, old, share(after)):
                changed.add(policy)
        if not ledger.policies and ledger.version is None:
            del self.nodes[node_uid]
        return changed

    def retire(self, live: set[str]) -> set[str]:
        """Nodes not in `live` (Node UIDs) are gone: their shares move to `retired`
        (the totals don't change). Returns the policies concerned."""
        concerned: set[str] = set()
        for node_uid in [u for u in self.nodes if u not in live and u not in self.retiring]:
            for policy, entry in self.nodes[node_uid].policies.items():
                self.retired[policy] = add(self.retired.get(policy, CountsStatus()), share(entry))
                concerned.add(policy)
            self.retiring.add(node_uid)
            self.dirty.add("")
        return concerned

    def forget(self, policies: set[str]) -> None:
        """Drop what is kept for policies that no longer exist (written at the next flush)."""
        for policy in [p for p in self.totals if p not in policies]:
            del self.totals[policy]
        if any(p not in policies for p in self.retired):
            self.retired = {p: c for p, c in self.retired.items() if p in policies}
            self.dirty.add("")
        for node_uid, ledger in self.nodes.items():
            if any(p not in policies for p in ledger.policies):
                ledger.policies = {p: e for p, e in ledger.policies.items() if p in policies}
                self.dirty.add(node_uid)

    @classmethod
    def loaded(cls, stored: Mapping[str, tuple[dict[str, Any], str]]) -> Ledger:
        """From the ConfigMaps (name → (data, resourceVersion)), at the first pass."""
        out = cls()
        for name, (data, version) in stored.items():
            try:
                doc = json.loads(data.get(KEY) or "{}")
                if name == RETIRED:
                    out.retired = {
                        p: CountsStatus.model_validate(c) for p, c in doc["policies"].items()
                    }
                    out.retiring = set(doc["nodes"])
                    out.retired_version = version
                else:
                    out.nodes[name.removeprefix(PREFIX)] = NodeLedger(
                        doc["node"],
                        {p: NodeCounters.model_validate(e) for p, e in doc["policies"].items()},
                        version,
                    )
            except (ValueError, KeyError, TypeError, ValidationError) as exc:
                log.warning("unreadable counts ConfigMap", extra={"name": name, "error": str(exc)})
        for node_uid in out.retiring - out.nodes.keys():
            out.retiring.discard(node_uid)  # deleted after it was retired: done
            out.dirty.add("")
        for node_uid, ledger in out.nodes.items():
            if node_uid not in out.retiring:
                for policy, entry in ledger.policies.items():
                    out.totals[policy] = add(out.counts(policy), share(entry))
        for policy, counts in out.retired.items():
            out.totals[policy] = add(out.counts(policy), counts)
        return out

    def body(self, node_uid: str, namespace: str) -> dict[str, Any]:
        """The ConfigMap for a node's ledger ("" : the retired one)."""
        if node_uid:
            ledger = self.nodes[node_uid]
            name, annotations = PREFIX + node_uid, {NODE_ANNOTATION: ledger.node}
            doc: dict[str, Any] = {
                "node": ledger.node,
                "policies": {
                    p: e.model_dump(by_alias=True, mode="json")
                    for p, e in sorted(ledger.policies.items())
                },
            }
        else:
            name, annotations = RETIRED, {}
            doc = {
                "policies": {p: c.model_dump(mode="json") for p, c in sorted(self.retired.items())},
                "nodes": sorted(self.retiring),
            }
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": MANAGED_BY,
                    "app.kubernetes.io/part-of": "stockade",
                    COMPONENT_LABEL: "counts",
                },
                "annotations": annotations,
            },
            "data": {KEY: json.dumps(doc, separators=(",", ":"))},
        }

    async def flush(self, kube: Kube) -> bool:
        """Write what changed: the retired totals first, then delete the ConfigMaps of
        the nodes they hold, then the nodes' ledgers. False: a write failed (it stays
        to write, at the next pass)."""
        dirty, self.dirty = self.dirty, set()
        failed = False

        def fail(what: str, exc: Exception) -> None:
            nonlocal failed
            failed = True
            metrics.ERRORS.labels(op="counts").inc()
            log.warning("counts not written", extra={"configmap": what, "error": str(exc)})

        async def put_retired() -> bool:
            try:
                self.retired_version = await kube.put_configmap(
                    self.body("", kube.namespace), self.retired_version
                )
            except WRITE_ERRORS as exc:
                if isinstance(exc, ApiException) and exc.status == 409:
                    self.retired_version = None
                self.dirty.add("")
                fail(RETIRED, exc)
                return False
            return True

        async def delete(node_uid: str) -> None:
            ledger = self.nodes.get(node_uid)
            if ledger is not None and ledger.version is not None:
                try:
                    await kube.delete_configmap(PREFIX + node_uid, ledger.version)
                except WRITE_ERRORS as exc:
                    fail(PREFIX + node_uid, exc)
                    return
            self.nodes.pop(node_uid, None)
            self.retiring.discard(node_uid)

        if "" in dirty and await put_retired() and self.retiring:
            before = len(self.retiring)
            await asyncio.gather(*(delete(u) for u in sorted(self.retiring)))
            if len(self.retiring) < before:  # as stored, the list names them still
                await put_retired()

        async def put(node_uid: str) -> None:
            ledger = self.nodes[node_uid]
            try:
                ledger.version = await kube.put_configmap(
                    self.body(node_uid, kube.namespace), ledger.version
                )
            except WRITE_ERRORS as exc:
                if isinstance(exc, ApiException) and exc.status == 409:
                    ledger.version = None
                self.dirty.add(node_uid)
                fail(PREFIX + node_uid, exc)

        await asyncio.gather(
            *(put(u) for u in sorted(dirty) if u in self.nodes and u not in self.retiring)
        )
        return not failed
