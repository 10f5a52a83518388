"""Bundle writing: compile each node's bundle, fit it in its ConfigMap, write or delete it.

Nothing is written that equals what is stored (hash, owner, cluster). A node
whose bundle can't be compiled keeps its previous one; policies that don't
fit are left out (`bundles.fit`) and the rest is written; a failed write is
retried for that node alone, after an exponential back-off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from stockade.kube import backoff
from stockade.operator import metrics
from stockade.operator.bundles import configmap, configmap_name, fit, payload_digest
from stockade.operator.election import NotLeading
from stockade.operator.kube import Kube
from stockade.operator.objects import PolicyKey, PolicyRecord
from stockade.operator.status import BUNDLE_TOO_LARGE, COMPILING, WRITE_FAILED, NodeProblem
from stockade.operator.targeting import NodeInputs
from stockade.policy.bundle import Sealed
from stockade.policy.compiler import CompileError, FragmentCache, compile_sealed

log = logging.getLogger("stockade.operator")
# What a write can fail with: the apiserver's refusal, no answer from it, or the
# renew deadline passed (the process exits in a moment).
WRITE_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError, NotLeading)


@dataclass(frozen=True)
class Written:
    """A node's bundle as stored: `policies` is None when only read back (not compiled)."""

    name: str
    hash: str
    owner_uid: str
    cluster: str
    policies: Mapping[PolicyKey, tuple[str, int]] | None = None  # key → (uid, generation)
    version: str | None = None  # resourceVersion as stored; None: not known (read first)
    digest: str = ""  # `payload_digest` of the content: bytes the operator wouldn't write
    # differ (a bundle edited or tampered with), whatever the hash annotation says

    def same(self, hash: str, owner_uid: str, cluster: str, digest: str) -> bool:
        return (self.hash, self.owner_uid, self.cluster, self.digest) == (
            hash,
            owner_uid,
            cluster,
            digest,
        )


@dataclass
class Plan:
    """One pass's work on a node, decided synchronously before the writes run."""

    node: str
    write: dict[str, Any] | None = None
    written: Written | None = None
    delete: str | None = None
    bytes: int = 0

    @property
    def writes(self) -> bool:
        return self.write is not None or self.delete is not None


@dataclass
class _Retry:
    """A node whose last bundle write failed: what to write, when."""

    attempts: int
    due: float  # time.monotonic()
    plan: Plan


class BundleWriter:
    """Owns what is known of every node's bundle, and the compile cache.

    `targets(node)`: the node's policies (their statuses change with its
    problems); `retry(node)`: called when a node's back-off is over.
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        cluster: str,
        targets: Callable[[str], frozenset[PolicyKey]],
        retry: Callable[[str], None],
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.cluster = cluster
        self.targets = targets
        self.retry = retry
        self.cache = FragmentCache()
        self.inputs: dict[str, Hashable] = {}  # node → the memo of its last compile
        self.written: dict[str, Written] = {}
        self.problems: dict[str, NodeProblem] = {}  # node → why its bundle isn't current
        self.refused: dict[str, dict[PolicyKey, NodeProblem]] = {}  # node → left out
        self._left_out = 0  # Σ len(refused.values())
        self.retries: dict[str, _Retry] = {}
        self.sizes: dict[str, dict[Hashable, int | str]] = {}  # node → what `fit` measured

    async def load(self) -> None:
        """What is stored, read again on every full pass: only what differs gets written,
        and a bundle deleted, edited or tampered with since it was written is (its node
        compiled again, even when its inputs didn't change). Content is compared by
        digest, not decoded: `from_configmap` takes ~6 ms a bundle, 9 s of CPU a pass
        at 1,000 nodes; the digest 0.1 ms, and it catches any byte changed."""
        stored = await self.kube.stored_bundles()
        for node in self.written.keys() - stored.keys():
            if not self._waiting(node):
                del self.written[node]
                self.inputs.pop(node, None)
        for node, s in stored.items():
            known = self.written.get(node)
            if known is not None and known.same(s.hash, s.owner_uid, s.cluster, s.digest):
                self.written[node] = replace(known, version=s.version, digest=s.digest)
            else:
                self.written[node] = Written(
                    s.name, s.hash, s.owner_uid, s.cluster, version=s.version, digest=s.digest
                )
                self.inputs.pop(node, None)

    def problem(self, node: str, key: PolicyKey) -> NodeProblem | None:
        """Why the node's bundle doesn't hold policy `key` as it should, if it can tell."""
        return self.refused.get(node, {}).get(key) or self.problems.get(node)

    def holds(self, node: str, key: PolicyKey, uid: str, generation: int) -> bool:
        written = self.written.get(node)
        return (
            written is not None
            and written.policies is not None
            and written.policies.get(key) == (uid, generation)
        )

    def plan(self, node: str, inputs: NodeInputs | None, status_keys: set[PolicyKey]) -> Plan:
        """What to write for the node (`inputs` None: it is gone); adds to `status_keys`
        the policies whose status this changes."""
        if inputs is None:
            return self._gone(node, status_keys)
        plan = Plan(node)
        memo = inputs.memo
        failed = self.problems.get(node)
        if self.inputs.get(node) == memo and (failed is None or failed.reason == WRITE_FAILED):
            retry = self.retries.get(node)
            if retry is not None and not self._waiting(node):
                return retry.plan  # the same write again, once its back-off is over
            return plan
        self.inputs[node] = memo
        compile_started = time.perf_counter()

        def build(records: Sequence[PolicyRecord]) -> tuple[Sealed, dict[str, Any]]:
            # the node's policies and labels already: no need to pass (and re-check) pods
            documents = [r.document for r in records if r.document is not None]
            bundle = compile_sealed(
                documents, node=node, namespace_labels=inputs.labels, cache=self.cache
            )
            return bundle, configmap(bundle, node, inputs.uid, self.namespace, self.cluster)

        try:
            fitted = fit(
                sorted(inputs.policies, key=lambda r: r.fit_order),
                build,
                key=lambda records: (
                    inputs.labels_key,
                    tuple((*r.key, r.uid, r.generation) for r in records),
                ),
                sizes=self.sizes.get(node, {}),
            )
        except CompileError as exc:
            self.problems[node] = NodeProblem(COMPILING, f"its bundle can't be compiled: {exc}")
            log.warning("bundle not compiled", extra={"node": node, "error": str(exc)})
            status_keys |= self.targets(node)
            return plan
        metrics.COMPILE_SECONDS.observe(time.perf_counter() - compile_started)
        self.sizes[node] = fitted.sizes
        if failed is not None and failed.reason == COMPILING:
            del self.problems[node]
            status_keys |= self.targets(node)
        self._set_refused(
            node,
            {
                r.key: NodeProblem(
                    BUNDLE_TOO_LARGE,
                    f"left out of its bundle: {why} (room goes to cluster policies first,"
                    " then the oldest)",
                )
                for r, why in fitted.left_out
            },
            status_keys,
        )
        if fitted.left_out:
            log.warning(
                "policies left out of a bundle too large",
                extra={"node": node, "policies": [r.label for r, _ in fitted.left_out]},
            )
        bundle = fitted.bundle
        held: dict[PolicyKey, tuple[str, int]] = {
            (p.kind, p.namespace or "", p.name): (p.uid, p.generation) for p in bundle.policies
        }
        body = fitted.body
        written = Written(
            configmap_name(node), bundle.hash, inputs.uid, self.cluster, held,
            digest=payload_digest(body["data"], body.get("binaryData")),
        )  # fmt: skip
        before = self.written.get(node)
        if before is not None and before.same(
            written.hash, written.owner_uid, written.cluster, written.digest
        ):
            self.written[node] = replace(written, version=before.version)
            self._write_done(node, status_keys)
            if before.policies is None:
                status_keys |= set(held)
            return plan
        status_keys |= set(held) | set(before.policies or ()) if before else set(held)
        plan.write = fitted.body
        plan.written = written
        plan.bytes = fitted.bytes
        retry = self.retries.get(node)
        if retry is not None and self._waiting(node):
            retry.plan = plan  # written when the node's back-off is over
            return Plan(node)
        return plan

    def _gone(self, node: str, status_keys: set[PolicyKey]) -> Plan:
        plan = Plan(node)
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
        if len(refused) != len(before):
            self._left_out += len(refused) - len(before)
            metrics.LEFT_OUT.set(self._left_out)

    def _waiting(self, node: str) -> bool:
        """Whether the node's bundle write failed and its back-off isn't over yet."""
        retry = self.retries.get(node)
        return retry is not None and time.monotonic() < retry.due

    def _write_done(self, node: str, status_keys: set[PolicyKey]) -> None:
        self.retries.pop(node, None)
        failed = self.problems.get(node)
        if failed is not None and failed.reason == WRITE_FAILED:
            del self.problems[node]
            status_keys |= self.targets(node)

    async def apply(self, plan: Plan, status_keys: set[PolicyKey]) -> None:
        stored = self.written.get(plan.node)
        version = stored.version if stored is not None else None
        try:
            if plan.delete is not None and plan.written is not None:
                await self.kube.delete_configmap(plan.delete, plan.written.version)
                metrics.BUNDLE_WRITES.labels(op="delete").inc()
                log.info("bundle deleted", extra={"node": plan.node, "configmap": plan.delete})
            elif plan.write is not None and plan.written is not None:
                version = await self.kube.put_configmap(plan.write, version)
                self.written[plan.node] = replace(plan.written, version=version)
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

    def _write_failed(self, plan: Plan, exc: Exception, status_keys: set[PolicyKey]) -> None:
        """Only this node waits: its next attempt after an exponential back-off (jittered)."""
        metrics.ERRORS.labels(op="bundle").inc()
        if plan.delete is not None and plan.written is not None:
            self.written.setdefault(plan.node, plan.written)  # still there: delete it again
        stored = self.written.get(plan.node)
        if stored is not None and isinstance(exc, ApiException) and exc.status == 409:
            self.written[plan.node] = replace(stored, version=None)  # changed: read it again
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
        status_keys |= self.targets(plan.node)
        asyncio.get_running_loop().call_later(delay, self.retry, plan.node)
