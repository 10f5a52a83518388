"""Generate the CRDs in `crds/` from the pydantic models.

`stockade generate-crds crds/` writes them; a test fails when the committed
files differ from what the models produce. The pydantic JSON schema is
turned into a Kubernetes structural schema: references inlined, nullable
unions collapsed, `additionalProperties: false` and defaults dropped (the
apiserver prunes unknown fields itself, and a schema default would show as a
permanent diff to GitOps tools).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from stockade.policy.reports import KIND as REPORT_KIND
from stockade.policy.reports import PLURAL as REPORT_PLURAL
from stockade.policy.reports import NodePolicyReportBody
from stockade.policy.resources import (
    GROUP,
    VERSION,
    ClusterContainerPolicySpec,
    ContainerPolicySpec,
    PolicyStatus,
)

_DROP = {"title", "default", "$defs"}


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as a Kubernetes structural schema."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    converted: dict[str, Any] = _convert(schema, schema.get("$defs", {}))
    return converted


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"a union can't be a structural schema: {node['anyOf']}")
        merged = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        return _convert(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "additionalProperties" and value is False):
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _convert(value, defs)
    if out.get("type") == "object" and not {"properties", "additionalProperties"} & out.keys():
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _columns() -> list[dict[str, Any]]:
    def column(name: str, kind: str, path: str, description: str) -> dict[str, Any]:
        return {"name": name, "type": kind, "jsonPath": path, "description": description}

    return [
        column("Mode", "string", ".status.mode", "enforce or audit"),
        column("Selectors", "integer", ".status.selectors", "selectors in both parts"),
        column("Nodes", "string", ".status.nodes.summary", "nodes applied/targeted"),
        column("Blocked", "integer", ".status.counts.blocked", "operations blocked"),
        column("Alerts", "integer", ".status.counts.alerted", "alerts raised"),
        column(
            "Ready",
            "string",
            '.status.conditions[?(@.type=="Ready")].status',
            "every targeted node runs this generation",
        ),
        column("Age", "date", ".metadata.creationTimestamp", ""),
    ]


def custom_resource_definition(
    kind: str, plural: str, short_name: str, scope: str, spec: type[BaseModel]
) -> dict[str, Any]:
    spec_schema = structural(spec)
    spec_schema["description"] = f"The policy: {kind} spec."
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": structural(PolicyStatus),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["stockade"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _columns(),
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def node_policy_report_definition() -> dict[str, Any]:
    """NodePolicyReport: cluster-scoped, one per node, written whole by the node's sensor."""
    body = structural(NodePolicyReportBody)
    schema = {
        "type": "object",
        "description": "What the sensor of the node this object is named after enforces.",
        "required": body.get("required", []),
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            **body["properties"],
        },
    }

    def column(name: str, kind: str, path: str, description: str) -> dict[str, Any]:
        return {"name": name, "type": kind, "jsonPath": path, "description": description}

    columns = [
        column("Mode", "string", ".sensor.mode", "lsm, kill or observe"),
        column("Bundle", "string", ".bundle.hash", "the bundle in force"),
        column("Dropped", "integer", ".droppedEvents", "events lost since sensor start"),
        column("Heartbeat", "date", ".sensor.heartbeatTime", "last report"),
        column("Age", "date", ".metadata.creationTimestamp", ""),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{REPORT_PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": REPORT_KIND,
                "listKind": f"{REPORT_KIND}List",
                "plural": REPORT_PLURAL,
                "singular": REPORT_KIND.lower(),
                "shortNames": ["npr"],
                "categories": ["stockade"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD."""
    crds = [
        custom_resource_definition(
            "ContainerPolicy", "containerpolicies", "cpol", "Namespaced", ContainerPolicySpec
        ),
        custom_resource_definition(
            "ClusterContainerPolicy",
            "clustercontainerpolicies",
            "ccpol",
            "Cluster",
            ClusterContainerPolicySpec,
        ),
        node_policy_report_definition(),
    ]
    return {f"{GROUP}_{crd['spec']['names']['plural']}.yaml": crd for crd in crds}


HEADER = "# Generated by `stockade generate-crds` from stockade/policy; do not edit.\n"


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=1000)


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in all_crds().items():
        path = directory / name
        path.write_text(render(crd))
        written.append(path)
    return written
