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


def _column(name: str, kind: str, path: str, description: str = "") -> dict[str, Any]:
    column = {"name": name, "type": kind, "jsonPath": path}
    return column | ({"description": description} if description else {})


AGE = _column("Age", "date", ".metadata.creationTimestamp")
POLICY_COLUMNS = [
    _column("Mode", "string", ".status.mode", "enforce or audit"),
    _column("Selectors", "integer", ".status.selectors", "selectors in both parts"),
    _column("Nodes", "string", ".status.nodes.summary", "nodes applied/targeted"),
    _column("Blocked", "integer", ".status.counts.blocked", "operations blocked"),
    _column("Alerts", "integer", ".status.counts.alerted", "alerts raised"),
    _column(
        "Ready",
        "string",
        '.status.conditions[?(@.type=="Ready")].status',
        "every targeted node runs this generation",
    ),
    AGE,
]
REPORT_COLUMNS = [
    _column("Mode", "string", ".sensor.mode", "lsm, fmodret, kill or observe"),
    _column("Bundle", "string", ".bundle.hash", "the bundle in force"),
    _column("Dropped", "integer", ".droppedEvents", "events lost since sensor start"),
    _column("Heartbeat", "date", ".sensor.heartbeatTime", "last report"),
    AGE,
]


def _definition(
    kind: str,
    plural: str,
    short_name: str,
    scope: str,
    columns: list[dict[str, Any]],
    schema: dict[str, Any],
    status_subresource: bool,
) -> dict[str, Any]:
    version: dict[str, Any] = {"name": VERSION, "served": True, "storage": True}
    if status_subresource:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    version["schema"] = {"openAPIV3Schema": schema}
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
            "versions": [version],
        },
    }


_OBJECT_FIELDS = {
    "apiVersion": {"type": "string", "description": "stockade.dev/v1alpha1"},
    "kind": {"type": "string", "description": "The kind of this object"},
    # The apiserver forbids anything but the type here (and explains metadata itself).
    "metadata": {"type": "object"},
}


def policy_definition(
    kind: str, plural: str, short_name: str, scope: str, spec: type[BaseModel], description: str
) -> dict[str, Any]:
    spec_schema = structural(spec)
    spec_schema["description"] = (
        "The policy in Defend for Containers' language (a process part, a file part or "
        "both), its mode and where it applies"
    )
    schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            **_OBJECT_FIELDS,
            "spec": spec_schema,
            "status": structural(PolicyStatus),
        },
    }
    return _definition(kind, plural, short_name, scope, POLICY_COLUMNS, schema, True)


def node_policy_report_definition() -> dict[str, Any]:
    """NodePolicyReport: cluster-scoped, one per node, written whole by the node's sensor."""
    body = structural(NodePolicyReportBody)
    schema = {
        "type": "object",
        "description": "What the sensor of the node this object is named after enforces.",
        "required": body.get("required", []),
        "properties": {**_OBJECT_FIELDS, **body["properties"]},
    }
    return _definition(REPORT_KIND, REPORT_PLURAL, "npr", "Cluster", REPORT_COLUMNS, schema, False)


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD."""
    crds = [
        policy_definition(
            "ContainerPolicy",
            "containerpolicies",
            "cpol",
            "Namespaced",
            ContainerPolicySpec,
            "A container-workload protection policy for the pods of its namespace",
        ),
        policy_definition(
            "ClusterContainerPolicy",
            "clustercontainerpolicies",
            "ccpol",
            "Cluster",
            ClusterContainerPolicySpec,
            "A container-workload protection policy for pods in any namespace",
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
