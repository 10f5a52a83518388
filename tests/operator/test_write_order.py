"""Concurrent bundle writes never let an older bundle of a node overwrite a newer one.

The operator writes up to `--write-concurrency` bundles at once; a node has at most one
write in flight (a pass waits for its writes, and a failed write is retried by a later
pass), and each replace is conditional on the resourceVersion the last one returned.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from stockade.kube import ListWatch
from stockade.operator.bundles import NODE_ANNOTATION, SELECTOR

from .conftest import Cluster, Kubectl, Operator, wait_for

pytestmark = pytest.mark.integration
NODES = 40
EDITS = 12


def policy(namespace: str, mode: str) -> str:
    return json.dumps(
        {
            "apiVersion": "stockade.dev/v1alpha1",
            "kind": "ContainerPolicy",
            "metadata": {"name": "everywhere", "namespace": namespace},
            "spec": {
                "mode": mode,
                "podSelector": {"matchLabels": {"app": "web"}},
                "process": {
                    "selectors": [{"name": "shells", "processName": ["bash"]}],
                    "responses": [{"match": ["shells"], "actions": ["alert"]}],
                },
            },
        }
    )


class Writes:
    """Every bundle write as the apiserver's watch delivers it (`stockade.kube.ListWatch`):
    node → the policy's generations, in the order they were stored."""

    def __init__(self, core: client.CoreV1Api, namespace: str, key: str) -> None:
        self.key = key
        self.generations: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        self.watch = ListWatch(
            "bundle-watch", partial(core.list_namespaced_config_map, namespace),
            on_list=self.listed,
            on_event=lambda _, item: self.seen(item),
            log=logging.getLogger("test"), label_selector=SELECTOR,
        )  # fmt: skip

    def listed(self, items: list[Mapping[str, Any]]) -> None:
        for item in items:
            self.seen(item)

    def seen(self, cm: Mapping[str, Any]) -> None:
        annotations = cm["metadata"].get("annotations") or {}
        held = annotations.get("stockade.dev/policies", "").split("\n")
        ours = [int(p.rpartition("@")[2]) for p in held if p.startswith(self.key + "@")]
        with self.lock:
            if ours:
                self.generations.setdefault(annotations[NODE_ANNOTATION], []).extend(ours)

    def latest(self) -> dict[str, int]:
        with self.lock:
            return {node: gens[-1] for node, gens in self.generations.items()}


def test_edits_in_quick_succession_reach_every_node_in_order(
    operator_crds: None, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    kubeconfig: str, namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    core = client.CoreV1Api(k8s_api)
    nodes = [cluster.node(f"w{i:02d}") for i in range(NODES)]
    for i, node in enumerate(nodes):
        cluster.pod(namespace, f"web-{i}", node, {"app": "web"})
    writes = Writes(core, namespace, f"{namespace}/everywhere")
    writes.watch.start()
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log")
    op.start("--standalone", "--write-concurrency", "8")
    try:
        kubectl("apply", "-f", "-", input=policy(namespace, "enforce"))
        wait_for("generation 1 on every node", lambda: len(writes.latest()) == NODES)
        rng = random.Random(7)
        for generation in range(2, EDITS + 2):  # some land while a pass's writes are in flight
            kubectl(
                "apply", "-f", "-", input=policy(namespace, ("audit", "enforce")[generation % 2])
            )
            time.sleep(rng.uniform(0.0, 0.3))
        last = EDITS + 1
        wait_for(
            f"generation {last} on every node",
            lambda: set(writes.latest().values()) == {last},
            timeout=60,
        )
        time.sleep(1.0)  # a stale write, if any, would land after the newest
    finally:
        op.stop()
        writes.watch.stop()
    with writes.lock:
        sequences = dict(writes.generations)
    backwards = {n: g for n, g in sequences.items() if g != sorted(g)}
    assert not backwards, f"an older bundle overwrote a newer one: {backwards}"
    assert {n: g[-1] for n, g in sequences.items()} == dict.fromkeys(nodes, last)
    stored: Any = core.list_namespaced_config_map(namespace, label_selector=SELECTOR)
    assert all(f"everywhere@{last}" in cm.metadata.annotations["stockade.dev/policies"]
               for cm in stored.items)  # fmt: skip
    written = sum(len(g) for g in sequences.values())
    print(f"{written} bundle writes over {NODES} nodes, every node's in generation order")
