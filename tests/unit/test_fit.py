"""Which policies a node's bundle keeps when they don't all fit in its ConfigMap.

Mostly with a stand-in for the compiler (a policy is its size in bytes); the
real compiler and apiserver are in tests/operator/test_isolation.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stockade.operator.bundles import configmap, fit, payload_digest
from stockade.operator.objects import policy_record
from stockade.policy.bundle import Bundle
from stockade.policy.compiler import compile_bundle
from stockade.policy.document import PolicyDocument

from .test_compiler import many_selector_policy


class Builder:
    """Builds a 'ConfigMap' whose payload is as large as its policies together."""

    def __init__(self) -> None:
        self.builds: list[tuple[int, ...]] = []

    def __call__(self, sizes: Sequence[int]) -> tuple[dict[str, Any], dict[str, Any]]:
        self.builds.append(tuple(sizes))
        return {"policies": list(sizes)}, {"data": {"bundle.json": "x" * sum(sizes)}}


def test_all_fit_in_one_build() -> None:
    build = Builder()
    fitted = fit([300, 200], build, key=tuple, sizes={}, limit=1000)
    assert fitted.bundle["policies"] == [300, 200] and fitted.left_out == []
    assert build.builds == [(300, 200)]


def test_one_that_does_not_fit_holds_back_no_later_one() -> None:
    build = Builder()
    fitted = fit([600, 500, 300, 200], build, key=tuple, sizes={}, limit=1000)
    assert fitted.bundle["policies"] == [600, 300]
    assert fitted.bytes == 900
    limit = "a bundle ConfigMap holds at most 1000 bytes"
    assert fitted.left_out == [
        (500, f"1100 bytes with this policy, 600 without; {limit}"),
        (200, f"1100 bytes with this policy, 900 without; {limit}"),
    ]

    # The next pass, one more policy: only the new trial is built, and the result.
    build.builds.clear()
    again = fit([600, 500, 300, 200, 50], build, key=tuple, sizes=fitted.sizes, limit=1000)
    assert again.bundle["policies"] == [600, 300, 50]
    assert build.builds == [(600, 300, 50)]


def test_a_bundle_the_kernel_cant_hold_does_not_fit_either() -> None:
    """Five policies of 256 file selectors: a bundle holds 1024 per part, so the fifth is
    left out (real compiler), instead of the node keeping its previous bundle."""
    docs = [many_selector_policy(f"p{i}", 256, offset=256 * i) for i in range(5)]

    def build(chosen: Sequence[PolicyDocument]) -> tuple[Bundle, dict[str, Any]]:
        bundle = compile_bundle(chosen, node="n")
        return bundle, configmap(bundle, "n", "uid", "stockade-system", "")

    fitted = fit(docs, build, key=lambda chosen: tuple(d.name for d in chosen), sizes={})
    assert [p.name for p in fitted.bundle.policies] == ["p0", "p1", "p2", "p3"]
    assert [(d.name, why) for d, why in fitted.left_out] == [
        ("p4", "with this policy, 1280 file selectors on one node; a bundle holds at most 1024"
         " per part")
    ]  # fmt: skip


def test_the_order_cluster_policies_then_the_oldest() -> None:
    def record(kind: str, name: str, namespace: str | None, created: str) -> Any:
        meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
        if namespace:
            meta["namespace"] = namespace
        spec: dict[str, Any] = {
            "process": {
                "selectors": [{"name": "all", "operation": ["exec"]}],
                "responses": [{"match": ["all"], "actions": ["log"]}],
            }
        }
        body = {"apiVersion": "stockade.dev/v1alpha1", "kind": kind, "metadata": meta}
        return policy_record({**body, "spec": spec})

    records = [
        record("ContainerPolicy", "b", "shop", "2026-01-01T00:00:00Z"),
        record("ContainerPolicy", "a", "shop", "2026-01-02T00:00:00Z"),
        record("ClusterContainerPolicy", "late", None, "2026-03-01T00:00:00Z"),
        record("ContainerPolicy", "a", "bank", "2026-01-01T00:00:00Z"),
    ]
    ordered = sorted(records, key=lambda r: r.fit_order)
    assert [r.label for r in ordered] == ["late@0", "bank/a@0", "shop/b@0", "shop/a@0"]


def test_payload_digest_tells_every_payload_apart() -> None:
    """The operator rewrites a bundle whose stored payload's digest differs from what it
    would write: payloads that differ anywhere, even only in where a key ends and its value
    begins, or in which of data and binaryData holds it, must digest differently."""
    payloads: list[tuple[dict[str, str] | None, dict[str, str] | None]] = [
        ({"bundle.json": "{}"}, None),
        ({"bundle.json": "{} "}, None),
        ({"bundle.jso": "n{}"}, None),
        ({"bundle.json": "{}", "x": ""}, None),
        (None, {"bundle.json": "{}"}),
        ({"a": "1", "b": "2"}, None),
        ({"a": "1b", "": "2"}, None),
        ({"a": "1"}, {"b": "2"}),
        ({"é": "1"}, None),
        ({"e": "1"}, None),
        (None, None),
    ]
    digests = [payload_digest(data, binary) for data, binary in payloads]
    assert len(set(digests)) == len(payloads)
    assert payload_digest({}, {}) == payload_digest(None, None)  # absent is empty
    assert payload_digest({"a": "1", "b": "2"}, None) == payload_digest({"b": "2", "a": "1"}, {})
