"""A Defend for Containers policy → a ClusterContainerPolicy or ContainerPolicy manifest.

The bare `process:`/`file:` policy a Fleet integration policy holds applies to every
container of the cluster, as a ClusterContainerPolicy without selectors does: that is
the conversion that means the same. With a namespace, the result is a ContainerPolicy,
which applies only there: the user asked for the narrower meaning, and the header says so.

Selectors whose `kubernetesNamespace` limits them are named in a comment, and when every
response's `match` selectors are limited that way, the comment says which
namespaceSelector would scope the policy the same way (the operator then sends it only to
nodes running those namespaces' pods). The meaning is never changed silently.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from stockade.policy.model import PartName, Policy
from stockade.policy.resources import API_VERSION

# A Kubernetes object name (DNS subdomain).
OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_OBJECT_NAME = 253
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # every namespace has it, set by Kubernetes


def object_name(stem: str) -> str | None:
    """A file name stem as an object name (lowercase, other characters as '-'), or None."""
    name = re.sub(r"[^a-z0-9.-]+", "-", stem.lower()).strip("-.")[:MAX_OBJECT_NAME].strip("-.")
    return name if OBJECT_NAME.match(name) else None


def _limited_selectors(policy: Policy) -> dict[tuple[PartName, str], list[str]]:
    """(part, selector) → the namespaces its kubernetesNamespace limits it to."""
    return {
        (part_name, selector.name): sorted(selector.kubernetes_namespace)
        for part_name, part in policy.parts().items()
        for selector in part.selectors
        if selector.kubernetes_namespace
    }


def _acting_namespaces(policy: Policy) -> list[str] | None:
    """The namespaces outside which no response can apply, or None when it can anywhere.

    A response applies only where one of its `match` selectors matches (excludes only take
    away), so when every `match` selector of every response names namespaces, the policy
    does nothing outside their union.
    """
    found: set[str] = set()
    for part in policy.parts().values():
        by_name = {s.name.lower(): s for s in part.selectors}
        for response in part.responses:
            for name in response.match:
                namespaces = by_name[name.lower()].kubernetes_namespace
                if not namespaces:
                    return None
                found.update(namespaces)
    return sorted(found)


def _comments(policy: Policy, source: str, namespace: str | None) -> list[str]:
    lines = [f"Converted by `stockade convert` from {source} (a Defend for Containers policy)."]
    if namespace is None:
        lines.append("A ClusterContainerPolicy without selectors: every container, as there.")
    else:
        lines.append(
            f"A ContainerPolicy: it applies only to pods in namespace {namespace}, "
            "which is narrower than the original."
        )
    limited = _limited_selectors(policy)
    for (part_name, selector), namespaces in limited.items():
        lines.append(
            f"{part_name} selector {selector} matches only in namespaces {', '.join(namespaces)}."
        )
        if namespace is not None and namespace not in namespaces:
            lines.append(f"  In namespace {namespace} it never matches.")
    acting = _acting_namespaces(policy)
    if namespace is None and acting is not None:
        lines += [
            "Every response's match selectors are limited so: the policy acts only in",
            f"namespaces {', '.join(acting)}. This namespaceSelector would mean the same and",
            "send the policy only to nodes running their pods; it is left out so that the",
            "conversion changes nothing:",
            "  namespaceSelector:",
            "    matchExpressions:",
            f"      - {{key: {NAMESPACE_LABEL}, operator: In, values: [{', '.join(acting)}]}}",
        ]
    return lines


def convert(policy: Policy, name: str, source: str, namespace: str | None = None) -> str:
    """The manifest, as YAML text with a header comment."""
    spec = policy.model_dump(by_alias=True, exclude_none=True, exclude={"version"}, mode="json")
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "ClusterContainerPolicy" if namespace is None else "ContainerPolicy",
        "metadata": metadata,
        "spec": spec,
    }
    # A comment ends at any line break (YAML's and Unicode's): the source's name is hostile.
    lines = [c for line in _comments(policy, source, namespace) for c in line.splitlines()]
    header = "".join(f"# {line}\n" for line in lines)
    return header + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)


class _Dumper(yaml.SafeDumper):
    """Lists of plain values in flow style, as policies are written: `actions: [alert]`."""


def _list(dumper: yaml.SafeDumper, values: list[Any]) -> yaml.Node:
    flow = all(isinstance(v, str | int | bool) for v in values)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", values, flow_style=flow)


_Dumper.add_representer(list, _list)
