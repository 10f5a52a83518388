"""Pods, watched outside kopf: only namespace, name, labels, node and phase are kept.

kopf gives every watched object a worker task with its own queue, loggers,
patch and the whole parsed body, and on start-up all of them wait together
at its indexing barrier: ~13 KiB per pod of Python objects, with 30,000 pods
most of the operator's peak memory. Scoping needs a few strings per pod, so
Pods are listed (in pages) and watched here, in a daemon thread with the
kubernetes client, and only `PodRef`s are kept, indexed by node and by
namespace. The index is only changed on the event loop (the thread hands
each change over with `call_soon_threadsafe`), so the reconciler reads it
without locks, like kopf's indexes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from stockade.operator.debounce import backoff
from stockade.operator.objects import PodRef, pod_ref

log = logging.getLogger("stockade.operator")
PodKey = tuple[str, str]  # namespace, name
PAGE = 500
WATCH_SECONDS = 240  # the apiserver ends a watch after this; it is resumed from its version


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class WatchError(Exception):
    """The apiserver ended the watch with an error event."""


def lean_ref(body: Mapping[str, Any]) -> tuple[PodKey, str | None, PodRef | None]:
    """(key, node, ref) of a pod body; node and ref are None unless `pod_ref` keeps it."""
    meta = body["metadata"]
    key = (sys.intern(meta.get("namespace", "")), meta["name"])
    found = pod_ref(body)
    if found is None:
        return key, None, None
    node, ref = found
    labels = tuple((sys.intern(k), sys.intern(v)) for k, v in ref.labels)
    return key, sys.intern(node), PodRef(key[0], ref.name, labels, sys.intern(ref.phase))


class PodIndex:
    """node → {pod key: PodRef}; namespace → {node: pods of the namespace there}.

    `on_change(nodes, listed)` is called (on the loop) with the nodes whose pods
    changed; `listed` is True once a full list is in (the first pass may start).
    """

    def __init__(self, on_change: Callable[[set[str], bool], None] | None = None) -> None:
        self.by_node: dict[str, dict[PodKey, PodRef]] = {}
        self.namespace_nodes: dict[str, dict[str, int]] = {}
        self._node_of: dict[PodKey, str] = {}
        self.on_change = on_change
        self.listed = False

    def __len__(self) -> int:
        return len(self._node_of)

    def _remove(self, key: PodKey) -> str | None:
        node = self._node_of.pop(key, None)
        if node is None:
            return None
        pods = self.by_node[node]
        del pods[key]
        if not pods:
            del self.by_node[node]
        counts = self.namespace_nodes[key[0]]
        counts[node] -= 1
        if not counts[node]:
            del counts[node]
            if not counts:
                del self.namespace_nodes[key[0]]
        return node

    def _put(self, key: PodKey, node: str, ref: PodRef) -> None:
        self._node_of[key] = node
        self.by_node.setdefault(node, {})[key] = ref
        counts = self.namespace_nodes.setdefault(key[0], {})
        counts[node] = counts.get(node, 0) + 1

    def apply(self, key: PodKey, node: str | None, ref: PodRef | None) -> set[str]:
        """One pod's new state (node/ref None: gone or finished); returns the nodes touched."""
        touched: set[str] = set()
        if node is not None and ref is not None and self.by_node.get(node, {}).get(key) == ref:
            return touched
        old = self._remove(key)
        if old is not None:
            touched.add(old)
        if node is not None and ref is not None:
            self._put(key, node, ref)
            touched.add(node)
        return touched

    def replace(self, entries: Iterable[tuple[PodKey, str, PodRef]]) -> set[str]:
        """All pods at once (a full list); returns the nodes whose pods changed."""
        fresh = {key: (node, ref) for key, node, ref in entries}
        touched: set[str] = set()
        for key in [k for k in self._node_of if k not in fresh]:
            node = self._remove(key)
            if node is not None:
                touched.add(node)
        for key, (node, ref) in fresh.items():
            touched |= self.apply(key, node, ref)
        return touched

    def _event(self, key: PodKey, node: str | None, ref: PodRef | None) -> None:
        touched = self.apply(key, node, ref)
        if touched and self.on_change is not None:
            self.on_change(touched, False)

    def _listed(self, entries: list[tuple[PodKey, str, PodRef]]) -> None:
        touched = self.replace(entries)
        self.listed = True
        if self.on_change is not None:
            self.on_change(touched, True)


class PodWatch:
    """List then watch all Pods in a daemon thread, feeding a `PodIndex` on the loop."""

    def __init__(self, api: client.ApiClient, index: PodIndex) -> None:
        self.core = client.CoreV1Api(api)
        self.index = index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.version: str | None = None  # resourceVersion to resume from; None: list

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(loop,), name="stockade pod watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """List, then watch from the list's resourceVersion; a watch that fails resumes
        from the last version seen, after a back-off; only a 410 lists again."""
        failures = 0
        while not self._stop.is_set():
            try:
                if self.version is None:
                    self.version = self._list(loop)
                self._watch(loop)
                failures = 0
            except Gone:
                log.info("pod watch expired: listing again")
                self.version = None
            except Exception as exc:
                if loop.is_closed():  # the operator is exiting
                    return
                failures += 1
                delay = backoff(failures)
                log.warning(
                    "pod watch failed; resuming",
                    extra={"error": str(exc), "attempts": failures, "retry": round(delay, 2)},
                )
                self._stop.wait(delay)

    def _list(self, loop: asyncio.AbstractEventLoop) -> str:
        entries: list[tuple[PodKey, str, PodRef]] = []
        token = ""
        while True:
            resp: Any = self.core.list_pod_for_all_namespaces(
                limit=PAGE, _continue=token or None, _preload_content=False,
                _request_timeout=60,
            )  # fmt: skip
            page = json.loads(resp.data)
            for item in page.get("items") or []:
                key, node, ref = lean_ref(item)
                if node is not None and ref is not None:
                    entries.append((key, node, ref))
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                version = str(meta.get("resourceVersion") or "")
                break
        loop.call_soon_threadsafe(self.index._listed, entries)
        return version

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until the apiserver ends the watch; `version` follows every event."""
        resp: Any
        try:
            resp = self.core.list_pod_for_all_namespaces(
                watch=True, resource_version=self.version, allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS, _preload_content=False,
                _request_timeout=(10, WATCH_SECONDS + 30),
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 410:
                raise Gone from exc
            raise
        try:
            for line in _lines(resp):
                if self._stop.is_set():
                    break
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone
                    raise WatchError(f"pod watch error: {obj.get('message')}")
                if kind != "BOOKMARK":
                    key, node, ref = lean_ref(obj)
                    if kind == "DELETED":
                        node, ref = None, None
                    loop.call_soon_threadsafe(self.index._event, key, node, ref)
                self.version = str(
                    (obj.get("metadata") or {}).get("resourceVersion") or self.version
                )
        finally:
            resp.release_conn()


def _lines(resp: Any) -> Iterable[bytes]:
    """The watch response's lines (one JSON event each)."""
    pending = b""
    for chunk in resp.stream(amt=65536, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending
