"""Kubernetes mode: the node's bundle from its ConfigMap, its containers, its report.

One record loop (the main thread) owns the kernel's maps and the node's containers; the
apiserver is read by watch threads (the node's bundle ConfigMap by a field selector on its
name, the pods bound to the node by `spec.nodeName`) that hand what they see to the loop
through a queue. A new bundle is decoded and written into the inactive slot by the
enforcer's worker thread, then flipped into force by the loop; a bundle that can't be
decoded or written is refused and the one in force stays. A container that appears or
changes is written into the active slot at once (`KillSensor.set_cgroup`), without a flip.
The last applied bundle and the containers it was applied for are kept in the state
directory and enforced at start, before the apiserver answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import threading
import time
from collections import ChainMap, OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from stockade.kube import Body, ListWatch, backoff
from stockade.operator.bundles import CLUSTER_ANNOTATION, configmap_name
from stockade.policy.bundle import Bundle as PolicyBundle
from stockade.policy.bundle import BundleError, from_configmap
from stockade.policy.model import PartName
from stockade.policy.reports import AppliedBundle, NodeError, Sensor
from stockade.policy.tables import container_masks
from stockade.sensor.cgroups import CgroupScanError, scan
from stockade.sensor.containers import Container
from stockade.sensor.ecs import Applied
from stockade.sensor.enforcer import Enforcer, Generation
from stockade.sensor.inputs import encode_applied
from stockade.sensor.kernel import KillSensor
from stockade.sensor.libbpf import BpfError
from stockade.sensor.output import Output
from stockade.sensor.pods import NodeContainers, PodError, pod_facts
from stockade.sensor.records import CgroupRecord
from stockade.sensor.report import ReportWriter, now, report_body
from stockade.sensor.state import StateDir

__all__ = ["NodeOptions", "NodeSensor"]

log = logging.getLogger("stockade.sensor")
POLL_MS = 50  # the loop's longest wait for records or the watches' news
KEEP_GONE = 4096  # facts of removed cgroups kept for their records still in the ring buffer
MAX_ERRORS = 8
MAX_PREFIX_PARTS = 8  # cgroup levels above a cgroup namespace's root we look through
MAX_COUNT = 2**53  # a carried count beyond it is damage, not counting (the report takes int64)


@dataclass(frozen=True)
class NodeOptions:
    node: str
    namespace: str  # where the operator writes the node's bundle ConfigMap
    cluster_name: str | None
    cgroup_root: Path  # the cgroup v2 mount
    version: str
    mode_reason: str
    heartbeat_s: float = 10.0  # a report at least this often
    report_s: float = 2.0  # and at most this often (on change)
    rescan_s: float = 30.0  # a scan of the cgroup filesystem, besides the kernel's news
    commit_s: float = 5.0  # the containers kept for restarts at most this often


class NodeSensor(Enforcer):
    """Enforces the node's bundle for the node's containers and reports back."""

    WITHOUT_CACHE = "waiting for the node's bundle from the apiserver"

    def __init__(
        self,
        sensor: KillSensor,
        api: client.ApiClient,
        output: Output,
        mode: str,
        options: NodeOptions,
        *,
        state: StateDir,
    ) -> None:
        super().__init__(sensor, output, mode, state=state)
        self.api = api
        self.options = options
        self.table = NodeContainers(cluster_name=options.cluster_name)
        self.gone: OrderedDict[int, Container] = OrderedDict()
        self.documented: Mapping[int, Container] = ChainMap(self.table.listed, self.gone)
        self.instance_id = secrets.token_hex(8)
        self.started = time.monotonic()
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        # the watches wake the loop with their news (a pod bound: its cgroup's masks into the
        # kernel before the kubelet makes it), rather than leave it for the next record; never
        # closed: a watch thread may still write to it after `close` (stopping doesn't join)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.errors: OrderedDict[str, NodeError] = OrderedDict()  # current, by what failed
        self.applied_time: datetime | None = None
        self.heartbeat = time.monotonic()  # the loop's last turn (/healthz)
        self.applies = 0  # bundles written and flipped into force from the apiserver
        self.last_apply_s = 0.0  # how long the last one took
        self.node_uid: str | None = None
        self._written: dict[int, Mapping[PartName, int]] = {}  # the active slot's cgroups
        self._unmade: dict[str, Container] | None = None  # the active slot's unmade pod cgroups
        self._slot = 0
        self._prefix = 0  # path components the kernel's cgroup paths have above our mount
        self._pending: Body | None = None  # the newest bundle ConfigMap not yet applied
        self._writing: Future[tuple[Generation, int, float] | None] | None = None
        self._cgroup_fail = 0
        self._dirty = True  # something the report shows changed since the last one
        self._reported = -float("inf")  # when the last report was handed over
        self._reported_tallies: tuple[tuple[int, int, int], ...] = ()
        self._rescan_due = self._commit_due = self._rescanned = 0.0
        self._containers_changed = False
        self._carrying = False  # counts carried from the last sensor, not reported yet
        self._cache_applied = False  # the containers known are those the cache kept
        self.reporter = ReportWriter(api, log)
        self.watches = [
            ListWatch(
                "bundle watch",
                client.CoreV1Api(api).list_namespaced_config_map,
                lambda items: self._news("bundle", items[0] if items else None),
                lambda kind, obj: self._news("bundle", None if kind == "DELETED" else obj),
                log=log, namespace=options.namespace,
                field_selector=f"metadata.name={configmap_name(options.node)}",
            ),
            ListWatch(
                "pod watch",
                client.CoreV1Api(api).list_pod_for_all_namespaces,
                lambda items: self._news("pods", items),
                lambda kind, obj: self._news("pod", (kind, obj)),
                log=log, field_selector=f"spec.nodeName={options.node}",
            ),
        ]  # fmt: skip

    def _news(self, what: str, value: Any) -> None:
        """From a watch thread: for the loop, woken now."""
        self.events.put((what, value))
        with contextlib.suppress(BlockingIOError):  # full: the loop is woken already
            os.write(self._wake_w, b"!")

    # -- logging and errors -------------------------------------------------------

    def say(self, message: str) -> None:
        log.info(message)

    def refuse(self, reason: str, then: str | None = None) -> None:
        self.counts["refused"] += 1
        kept = f"generation {self.generation}" if self.generation else "no policy"
        message = f"refused: {reason}; {then or kept + ' stays in force'}"
        log.error(message)
        self._error("bundle", message)

    def _error(self, key: str, message: str | None) -> None:
        """Set (or clear, with None) the current error of one concern, for the report."""
        if message is None:
            if self.errors.pop(key, None) is not None:
                self._dirty = True
            return
        old = self.errors.get(key)
        if old is None or old.message != message:
            self.errors[key] = NodeError(time=now(), message=message[:4096])
            self.errors.move_to_end(key)
            while len(self.errors) > MAX_ERRORS:
                self.errors.popitem(last=False)
            self._dirty = True

    # -- start ----------------------------------------------------------------------

    def start_offline(self) -> bool:
        """What can be done before the apiserver answers: the node's cgroups, then the cached
        bundle with the containers it was applied for (those whose cgroups are still there),
        and the counts the previous sensor couldn't report. Meant for before the programs
        attach; True if a cached bundle is in force."""
        self._rescan()
        cached = self._cache_applied = self.apply_cached()
        carried = self.state.read_unreported()
        self._carrying = bool(carried)
        for entry in carried:
            match entry:
                case [str(uid), int(generation), int(blocked), int(alerted), int(logged)] if (
                    0 <= min(blocked, alerted, logged) <= max(blocked, alerted, logged) <= MAX_COUNT
                ) and (tally := self.tallies.get((uid, generation))):
                    tally.blocked, tally.alerted, tally.logged = blocked, alerted, logged
                case _:  # one the report can't carry would have it refused for ever
                    log.warning(f"unreported counts not carried: {str(entry)[:200]}")
        return cached

    def restored(self, applied: Applied) -> Applied:
        """The cached containers whose cgroup is still there, listed with their cached facts
        until the pods come (`NodeContainers.restore`)."""
        return Applied(
            applied.generation, applied.bundle, self.table.restore(applied.containers.values())
        )

    def start(self) -> None:
        """Start the watches, the report writer and the cluster id lookup."""
        for watch in self.watches:
            watch.start()
        self.reporter.start()
        threading.Thread(target=self._lookups, name="stockade lookups", daemon=True).start()

    def _lookups(self) -> None:
        """The Node's UID (the report's owner) and the cluster id (the kube-system
        namespace's UID), retried until they answer."""
        core = client.CoreV1Api(self.api)
        attempts = 0
        while True:
            try:
                node = core.read_node(self.options.node, _request_timeout=10)
                ns = core.read_namespace("kube-system", _request_timeout=10)
                uids = (node.metadata and node.metadata.uid, ns.metadata and ns.metadata.uid)
                self._news("lookups", uids)
                return
            except Exception as exc:  # whatever the client raises: try again later
                attempts += 1
                reason = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else exc
                log.warning(
                    "can't read the Node or the kube-system namespace yet",
                    extra={"error": str(reason), "attempts": attempts},
                )
                time.sleep(backoff(attempts))

    # -- generations ------------------------------------------------------------------

    def documented_containers(self, applied: Applied) -> Mapping[int, Container]:
        return self.documented

    def activate(self, prepared: Generation, slot: int, how: str) -> None:
        # the containers that changed since the slot was written, into it before the flip:
        # none of them is undecided for a moment in the new generation
        self._slot, self._written, self._unmade = slot, dict(prepared.cgroups), None
        self._sync_cgroups(set(self.table.listed) | set(self._written), prepared.applied.bundle)
        self._sync_unmade(prepared.applied.bundle)
        super().activate(prepared, slot, how)
        self.applied_time = now()
        self._dirty = True

    def _write_bundle(
        self, body: Body, snapshot: dict[int, Container]
    ) -> tuple[Generation, int, float] | None:
        """In the worker thread: decode the ConfigMap, write the inactive slot, keep it for
        restarts; None when it is the bundle in force already."""
        t0 = time.monotonic()
        meta = body.get("metadata") or {}
        bundle = from_configmap(body.get("data"), body.get("binaryData"), meta.get("annotations"))
        current = self.in_force
        if current is not None and current.applied.bundle.hash == bundle.hash:
            return None
        applied = Applied(0, bundle, snapshot)
        prepared, slot = self.prepare(applied)
        problem = self.state.commit(encode_applied(applied))
        if problem is not None:
            log.warning(f"can't keep the bundle for restarts ({problem}); enforcing it anyway")
        return prepared, slot, time.monotonic() - t0

    def _advance(self) -> None:
        """A written slot into force; then the newest ConfigMap seen, if any, to the worker."""
        if self._writing is not None and self._writing.done():
            writing, self._writing = self._writing, None
            try:
                written = writing.result()
            except Exception as exc:  # whatever a hostile bundle breaks: refused, never a crash
                known = isinstance(exc, BundleError | BpfError | OSError)
                self.refuse(f"bundle ConfigMap: {exc if known else f'{type(exc).__name__}: {exc}'}")
            else:
                self._error("bundle", None)
                if written is None:
                    self.say(
                        f"the node's bundle is the one in force (generation {self.generation})"
                    )
                else:
                    prepared, slot, seconds = written
                    self.applies += 1
                    self.last_apply_s = seconds
                    self.activate(prepared, slot, f" in {seconds * 1000:.0f} ms")
        if self._writing is None and self._pending is not None:
            body, self._pending = self._pending, None
            self._writing = self._worker.submit(self._write_bundle, body, dict(self.table.listed))

    # -- containers -------------------------------------------------------------------

    def _sync_cgroups(self, cgroup_ids: set[int], bundle: PolicyBundle | None = None) -> None:
        """Write the masks of these cgroups (as `bundle`, by default the one in force,
        computes them) into `_slot` where they differ from what it holds; unlist the ones
        gone."""
        if bundle is None:
            current = self.in_force
            if current is None:
                return
            bundle = current.applied.bundle
        failed = False
        for cgid in cgroup_ids:
            facts = self.table.listed.get(cgid)
            masks = container_masks(bundle, facts.workload) if facts else None
            if masks == self._written.get(cgid):
                continue
            try:
                self.sensor.set_cgroup(self._slot, cgid, masks)
            except BpfError as exc:  # the map is full: say so, the next change retries
                self._error("cgroups", f"can't list cgroup {cgid}: {exc}")
                failed = True
                continue
            if masks is None:
                self._written.pop(cgid, None)
            else:
                self._written[cgid] = masks
        if not failed:
            self._error("cgroups", None)

    def _sync_unmade(self, bundle: PolicyBundle | None = None) -> None:
        """The known pods whose cgroup isn't made yet, into `_slot` (`KillSensor.set_pod_cgroups`)
        with the masks their cgroup will be listed with: the kernel lists it in its mkdir."""
        if bundle is None:
            current = self.in_force
            if current is None:
                return
            bundle = current.applied.bundle
        unmade = self.table.unmade()
        if unmade == self._unmade:
            return
        names = {name: container_masks(bundle, facts.workload) for name, facts in unmade.items()}
        try:
            self.sensor.set_pod_cgroups(self._slot, names)
        except BpfError as exc:  # the map is full: say so, the next change retries
            self._error("pod cgroups", f"can't list the cgroups of pods not started yet: {exc}")
            self._unmade = None
            return
        self._error("pod cgroups", None)
        self._unmade = unmade

    def _changed(self, cgroup_ids: set[int], removed: Mapping[int, Container] = {}) -> None:
        if not cgroup_ids:
            return
        for cgid in cgroup_ids:
            old = removed.get(cgid)
            if old is not None and cgid not in self.table.listed:
                self.gone[cgid] = old
        while len(self.gone) > KEEP_GONE:
            self.gone.popitem(last=False)
        self._sync_cgroups(cgroup_ids)
        self._containers_changed = True

    def _table_change(self, change: Callable[..., set[int]], *args: Any) -> None:
        """Apply one change to the table; its cgroups into the kernel, the removed ones'
        facts kept a while for the records still on their way."""
        before = dict(self.table.listed)
        self._changed(change(*args), before)
        self._sync_unmade()

    def on_cgroup(self, rec: CgroupRecord) -> None:
        self.counts["cgroup_records"] += 1
        if rec.path_truncated:
            self.counts["cgroup_paths_truncated"] += 1
            return
        if rec.created:
            path = self._local_path(rec.path, rec.cgroup_id)
            if path is not None:
                self._table_change(self.table.add_cgroup, rec.cgroup_id, path)
        else:
            self._table_change(self.table.remove_cgroup, rec.cgroup_id)

    def _local_path(self, path: str, cgroup_id: int) -> str | None:
        """The kernel's path (from the hierarchy's root) as seen below our cgroup2 mount,
        which shows a subtree when the sensor runs in a cgroup namespace (a kind node):
        the prefix to strip is the one whose directory has the record's cgroup id. None
        when the cgroup is gone already (the next scan settles it)."""
        parts = path.split("/")
        candidates = [self._prefix] + [n for n in range(len(parts)) if n != self._prefix]
        for n in candidates[: MAX_PREFIX_PARTS + 1]:
            local = "/" + "/".join(p for p in parts[n:] if p)
            try:
                if os.lstat(f"{self.options.cgroup_root}{local}").st_ino == cgroup_id:
                    self._prefix = n
                    return local
            except (OSError, ValueError):
                continue
        self.counts["cgroup_paths_unresolved"] += 1
        return None

    def _rescan(self) -> None:
        """The node's cgroups from the cgroup filesystem (at start, periodically, and when
        the kernel lost cgroup records)."""
        root = self.options.cgroup_root
        try:
            found = [(cgid, path) for cgid, path, _ in scan(root)]
        except (OSError, CgroupScanError) as exc:
            self._error("scan", f"can't scan the cgroups under {root}: {exc}")
            return
        self._error("scan", None)
        self._table_change(self.table.replace_cgroups, found)

    # -- the apiserver's news -----------------------------------------------------------

    def _on_pod(self, kind: str, body: Body) -> None:
        try:
            pod = pod_facts(body)
        except PodError as exc:
            self.counts["refused_pods"] += 1
            meta = body.get("metadata") if isinstance(body, dict) else None
            name = f"{meta.get('namespace')}/{meta.get('name')}" if isinstance(meta, dict) else "?"
            log.warning(f"pod {name}: can't read: {exc}; its containers stay as they were")
            return
        if kind == "DELETED":
            self._table_change(self.table.remove_pod, pod.uid)
        else:
            self._table_change(self.table.put_pod, pod)

    def _on_pods(self, bodies: list[Body]) -> None:
        pods = []
        for body in bodies:
            try:
                pods.append(pod_facts(body))
            except PodError as exc:
                self.counts["refused_pods"] += 1
                log.warning(f"a pod can't be read: {exc}")
        self._table_change(self.table.replace_pods, pods)

    def _handle_events(self) -> None:
        while True:
            try:
                what, value = self.events.get_nowait()
            except queue.Empty:
                return
            if what == "bundle":
                if value is None:
                    self._error(
                        "configmap", f"the bundle ConfigMap {configmap_name(self.options.node)} "
                        "is missing; the bundle in force stays",
                    )  # fmt: skip
                    continue
                self._error("configmap", None)
                self._pending = value
                annotations = (value.get("metadata") or {}).get("annotations") or {}
                cluster = annotations.get(CLUSTER_ANNOTATION)
                if not self.options.cluster_name and isinstance(cluster, str) and cluster:
                    self._table_change(self.table.set_cluster, self.table.cluster_id, cluster)
            elif what == "pods":
                self._on_pods(value)
            elif what == "pod":
                self._on_pod(*value)
            elif what == "lookups":
                self.node_uid, cluster_id = value
                self._dirty = True
                self._table_change(self.table.set_cluster, cluster_id, self.table.cluster_name)

    # -- report ---------------------------------------------------------------------------

    def _report(self, monotonic: float) -> None:
        if self.node_uid is None:
            return
        current = self.in_force
        stats = self.stats()
        body = report_body(
            node=self.options.node,
            node_uid=self.node_uid,
            sensor=Sensor(
                instance_id=self.instance_id,
                version=self.options.version,
                kernel_version=self.host.kernel,
                mode=self.mode,
                mode_reason=self.options.mode_reason[:1024],
                heartbeat_time=now(),
            ),
            bundle=AppliedBundle(hash=current.applied.bundle.hash, applied_time=self.applied_time)
            if current is not None
            else None,
            tallies=list(self.tallies.values()),
            dropped=stats["dropped"],
            errors=self.errors.values(),
        )
        self.reporter.submit(body)
        self._reported = monotonic
        self._dirty = False
        self._reported_tallies = self._tally_state()

    def _tally_state(self) -> tuple[tuple[int, int, int], ...]:
        return tuple((t.blocked, t.alerted, t.logged) for t in self.tallies.values())

    def _periodic(self, monotonic: float) -> None:
        stats_fail = self.sensor.stats().get("cgroup_fail", 0)
        lost = stats_fail != self._cgroup_fail and monotonic >= self._rescanned + 1.0
        if monotonic >= self._rescan_due or lost:  # lost cgroup records: at most once a second
            self._cgroup_fail = stats_fail
            self._rescan()
            self._rescanned = monotonic
            self._rescan_due = monotonic + self.options.rescan_s
        if self._containers_changed and monotonic >= self._commit_due and self._writing is None:
            self._commit_containers()
            self._commit_due = monotonic + self.options.commit_s
        if self._carrying and self.reporter.writes:  # what the last sensor counted is in
            self.state.forget_unreported()
            self._carrying = False
        since = monotonic - self._reported
        changed = self._dirty or self._tally_state() != self._reported_tallies
        if since >= self.options.heartbeat_s or (changed and since >= self.options.report_s):
            self._report(monotonic)

    def _commit_containers(self) -> None:
        """Keep the containers the bundle in force is applied for, for a restart."""
        current = self.in_force
        self._containers_changed = False
        if current is None:
            return
        applied = Applied(0, current.applied.bundle, dict(self.table.listed))
        problem = self.state.commit(encode_applied(applied))
        if problem is not None:
            log.warning(f"can't keep the containers for restarts ({problem})")

    # -- the loop -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """A bundle in force for the containers known: the pods listed by the apiserver, or
        (until then) those the cached bundle was applied for."""
        return self.in_force is not None and (self.table.pods_listed or self._cache_applied)

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.pump(POLL_MS, self._wake_r)
            self._handle_events()
            self._advance()
            monotonic = time.monotonic()
            self._periodic(monotonic)
            self.heartbeat = monotonic
        self.drain()

    def close(self) -> None:
        """Stop the watches, write the last report, then what every mode stops."""
        for watch in self.watches:
            watch.stop()
        if self.node_uid is not None:
            self._report(time.monotonic())
        self.reporter.stop()
        acknowledged = self.reporter.acknowledged
        unreported = []
        for key, t in self.tallies.items():
            counts = (t.blocked, t.alerted, t.logged)
            if counts != acknowledged.get(key, (0, 0, 0)):  # the new instance starts from these
                seen = acknowledged.get(key, (0, 0, 0))
                unreported.append([*key, *(n - s for n, s in zip(counts, seen, strict=True))])
        if unreported:
            self.state.keep_unreported(unreported)
        super().close()
