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
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client

from stockade.kube import Body, ListWatch
from stockade.operator.objects import PodRef, pod_ref

log = logging.getLogger("stockade.operator")
PodKey = tuple[str, str]  # namespace, name


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
        self.index = index
        self._loop: asyncio.AbstractEventLoop | None = None
        self.watch = ListWatch(
            "pod watch",
            client.CoreV1Api(api).list_pod_for_all_namespaces,
            self._on_list,
            self._on_event,
            log=log,
            stopped=lambda: self._loop is None or self._loop.is_closed(),  # exiting
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.watch.start()

    def stop(self) -> None:
        self.watch.stop()

    def _on_list(self, items: list[Body]) -> None:
        entries = []
        for item in items:
            key, node, ref = lean_ref(item)
            if node is not None and ref is not None:
                entries.append((key, node, ref))
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.index._listed, entries)

    def _on_event(self, kind: str, obj: Body) -> None:
        key, node, ref = lean_ref(obj)
        if kind == "DELETED":
            node, ref = None, None
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.index._event, key, node, ref)
