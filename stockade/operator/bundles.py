"""The ConfigMap that carries one node's bundle: its name, labels and annotations."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from stockade.policy.bundle import HASH_ANNOTATION, Bundle, Sealed, configmap_payload
from stockade.policy.compiler import CompileError

T = TypeVar("T")
B = TypeVar("B")  # the bundle (a stand-in in tests of the fitting alone)

NAME_PREFIX = "stockade-node-"
MAX_NAME = 253  # a ConfigMap name is a DNS subdomain
POLICIES_ANNOTATION = "stockade.dev/policies"
NODE_ANNOTATION = "stockade.dev/node"
CLUSTER_ANNOTATION = "stockade.dev/cluster-name"  # for kubernetesClusterName conditions
MANAGED_BY = "stockade-operator"
COMPONENT_LABEL = "app.kubernetes.io/component"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},{COMPONENT_LABEL}=bundle"
# The apiserver refuses a ConfigMap whose data and binaryData values (decoded) take more
# than 1 MiB in all (core.MaxSecretSize; checked against a real one in tests/operator).
MAX_PAYLOAD_BYTES = 1024 * 1024


def configmap_name(node: str) -> str:
    """`stockade-node-<node>`; too long a name keeps a prefix of the node and a hash of all."""
    name = NAME_PREFIX + node
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(node.encode()).hexdigest()[:16]
    keep = (NAME_PREFIX + node)[: MAX_NAME - len(digest) - 1].rstrip("-.")
    return f"{keep}-{digest}"


def policy_labels(bundle: Bundle | Sealed) -> str:
    """The bundle's policies as `namespace/name@generation`, one per line, for kubectl."""
    return "\n".join(
        (f"{p.namespace}/" if p.namespace else "") + f"{p.name}@{p.generation}"
        for p in bundle.policies
    )


def configmap(
    bundle: Bundle | Sealed, node: str, node_uid: str, namespace: str, cluster: str
) -> dict[str, Any]:
    """The whole ConfigMap for `bundle` on `node`, owned by the Node (garbage-collected with it)."""
    data, binary_data = configmap_payload(bundle)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(node),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGED_BY,
                "app.kubernetes.io/part-of": "stockade",
                COMPONENT_LABEL: "bundle",
            },
            "annotations": {
                NODE_ANNOTATION: node,
                CLUSTER_ANNOTATION: cluster,
                HASH_ANNOTATION: bundle.hash,
                POLICIES_ANNOTATION: policy_labels(bundle),
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
            ],
        },
        "data": data,
    }
    if binary_data:
        body["binaryData"] = binary_data
    return body


def payload_digest(data: Mapping[str, str] | None, binary_data: Mapping[str, str] | None) -> str:
    """A digest of a ConfigMap's payload exactly as written: equal digests, equal bytes
    (cheap next to `from_configmap`'s decode, ~6 ms for a 13 KB bundle). Every key and
    value length-prefixed, not JSON: escaping a ~40 KiB bundle took most of its time."""
    digest = hashlib.sha256()
    for section in (data or {}, binary_data or {}):
        digest.update(b"%d;" % len(section))
        for key in sorted(section):
            for text in (key, section[key]):
                raw = text.encode("utf-8", "surrogatepass")
                digest.update(b"%d:" % len(raw))
                digest.update(raw)
    return digest.hexdigest()


def payload_bytes(body: dict[str, Any]) -> int:
    """What the apiserver counts against MAX_PAYLOAD_BYTES: the values, binaryData decoded."""
    data = sum(len(v.encode()) for v in body["data"].values())
    binary = sum(len(base64.b64decode(v)) for v in (body.get("binaryData") or {}).values())
    return data + binary


@dataclass
class Fitted(Generic[T, B]):
    """A node's ConfigMap with the policies that fit, and those left out with why."""

    body: dict[str, Any]
    bundle: B
    bytes: int
    left_out: list[tuple[T, str]]  # (policy, why: the sizes, or what can't be compiled)
    sizes: dict[Hashable, int | str]  # what this fit measured or reused, by key


def fit(
    policies: Sequence[T],
    build: Callable[[Sequence[T]], tuple[B, dict[str, Any]]],
    key: Callable[[Sequence[T]], Hashable],
    sizes: Mapping[Hashable, int | str],
    limit: int = MAX_PAYLOAD_BYTES,
) -> Fitted[T, B]:
    """The ConfigMap (from `build`) holding as many of `policies`, in their order, as fit.

    All of them when they fit (one build, the usual case); else each in turn
    is kept when the bundle with it still fits, so a policy that doesn't fit
    never holds back a later, smaller one. A bundle that `build` can't compile
    (more selectors or responses than the kernel's tables hold) doesn't fit
    either. The empty bundle always fits. `sizes` (by `key`, from the node's
    previous fit: payload bytes, or the compile error) spares building again
    the sets measured before: while policies arrive one by one, only the new
    ones are.
    """
    measured: dict[Hashable, int | str] = {}
    latest: tuple[B, dict[str, Any]] | None = None  # built by the last measure, if it built

    def measure(trial: Sequence[T]) -> int | str:
        nonlocal latest
        k = key(trial)
        latest = None
        if k in sizes:
            measured[k] = sizes[k]
        else:
            try:
                latest = build(trial)
                measured[k] = payload_bytes(latest[1])
            except CompileError as exc:
                measured[k] = str(exc)
        return measured[k]

    def fits(size: int | str) -> bool:
        return isinstance(size, int) and size <= limit

    kept: list[T] = list(policies)
    left_out: list[tuple[T, str]] = []
    # Trying them all at once is only worth it when the last fit didn't overflow (one by
    # one, all of them are kept when all fit: the same result, more builds).
    overflowed = not all(fits(size) for size in sizes.values())
    if overflowed or not fits(measure(kept)):
        kept = []
        without, kept_build = measure(kept), latest
        if not fits(without):
            raise CompileError(f"even without policies: {without}")
        for policy in policies:
            size = measure([*kept, policy])
            if fits(size):
                kept.append(policy)
                without, kept_build = size, latest
            elif isinstance(size, int):
                left_out.append(
                    (
                        policy,
                        f"{size} bytes with this policy, {without} without; a bundle"
                        f" ConfigMap holds at most {limit} bytes",
                    )
                )
            else:
                left_out.append((policy, f"with this policy, {size}"))
        latest = kept_build
    bundle, body = latest or build(kept)
    return Fitted(body, bundle, payload_bytes(body), left_out, measured)
