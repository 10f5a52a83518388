"""Index templates and data streams: `logs-cloud_defend.{process,file,alerts}-<namespace>`.

Field types are those Elastic's `cloud_defend` package (ECS 8.10) declares for the same
fields, narrowed to what every Elasticsearch build has: this one (and any without the
stack's modules) has no `match_only_text`, `wildcard` or `constant_keyword`, so those
become `keyword` (with a `text` sub-field where ECS has one), and the templates are
self-contained (no `logs@*` component templates). `FIELDS` is the single list of what the
sensor may write; a test checks every field of every document against it.
"""

from __future__ import annotations

import re
from typing import Any

from stockade.sensor.ecs import Document

__all__ = [
    "DATASETS",
    "FIELDS",
    "NamespaceError",
    "check_namespace",
    "component_template",
    "index_templates",
    "install",
    "mappings",
    "route",
]

DATASETS = ("process", "file", "alerts")
COMPONENT = "logs-cloud_defend@stockade"
TEMPLATE_VERSION = 1  # bump when FIELDS or settings change; installed templates say theirs

_LEADER = {
    "pid": "long", "entity_id": "keyword", "executable": "keyword+text", "name": "keyword+text",
    "args": "keyword", "args_count": "long", "command_line": "keyword+text", "start": "date",
    "end": "date", "interactive": "boolean", "working_directory": "keyword+text",
    "same_as_process": "boolean", "user.id": "keyword", "user.name": "keyword",
    "group.id": "keyword", "group.name": "keyword", "entry_meta.type": "keyword",
}  # fmt: skip

FIELDS: dict[str, str] = {
    "@timestamp": "date",
    "message": "text",
    "ecs.version": "keyword",
    **{f"agent.{k}": "keyword" for k in ("id", "name", "type", "version")},
    **{f"data_stream.{k}": "keyword" for k in ("type", "dataset", "namespace")},
    **{f"event.{k}": "keyword" for k in (
        "kind", "category", "action", "type", "module", "dataset", "id", "outcome",
        "agent_id_status")},
    "event.created": "date",
    "event.ingested": "date",
    **{f"host.{k}": "keyword" for k in (
        "name", "hostname", "id", "architecture", "boot.id", "mac", "pid_ns_ino",
        "os.kernel", "os.type", "os.family", "os.name", "os.full", "os.version",
        "os.platform", "os.codename")},
    "host.ip": "ip",
    **{f"cloud.{k}": "keyword" for k in (
        "account.id", "account.name", "availability_zone", "instance.name", "project.id",
        "project.name", "provider", "region")},
    **{f"process.{k}": v for k, v in _LEADER.items()},
    "process.thread.id": "long",
    "process.exit_code": "long",
    "process.tty.char_device.major": "long",
    "process.tty.char_device.minor": "long",
    **{f"process.{who}.{k}": v for who in (
        "parent", "session_leader", "group_leader", "entry_leader", "previous")
        for k, v in _LEADER.items()},
    "user.id": "keyword",
    "user.name": "keyword",
    "group.id": "keyword",
    "group.name": "keyword",
    **{f"file.{k}": "keyword" for k in ("name", "extension", "directory", "type", "mode")},
    "file.path": "keyword+text",
    **{f"container.{k}": "keyword" for k in ("id", "name", "image.name", "image.tag")},
    **{f"orchestrator.{k}": "keyword" for k in (
        "type", "cluster.id", "cluster.name", "namespace", "resource.name", "resource.type",
        "resource.label", "resource.annotation", "resource.parent.type")},
    "orchestrator.resource.ip": "ip",
    **{f"cloud_defend.{k}": "keyword" for k in (
        "matched_selectors", "package_policy_id", "hook_point", "trace_point", "actions",
        "outcome", "enforcement_mode", "bundle_hash", "file_operations", "volume")},
    "cloud_defend.package_policy_revision": "long",
    "cloud_defend.would_block": "boolean",
    "cloud_defend.bundle_generation": "long",
    "cloud_defend.cgroup_id": "long",
    "cloud_defend.mount_namespace": "long",
    **{f"cloud_defend.policies.{k}": "keyword" for k in (
        "kind", "namespace", "name", "uid", "mode", "matched_selectors")},
    "cloud_defend.policies.generation": "long",
}  # fmt: skip


def _field_mapping(kind: str) -> Document:
    if kind == "keyword+text":  # ECS: keyword with a `.text` match_only_text multi-field
        return {"type": "keyword", "ignore_above": 1024, "fields": {"text": {"type": "text"}}}
    if kind == "keyword":
        return {"type": "keyword", "ignore_above": 1024}
    return {"type": kind}


def mappings() -> Document:
    """FIELDS as nested `properties`; unknown fields are kept in _source, not indexed."""
    root: Document = {}
    for dotted, kind in FIELDS.items():
        node = root
        *parents, leaf = dotted.split(".") if dotted != "@timestamp" else ["@timestamp"]
        for part in parents:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[leaf] = _field_mapping(kind)
    return {"dynamic": False, "date_detection": False, "properties": root}


def component_template() -> Document:
    return {
        "template": {
            "settings": {"index": {"auto_expand_replicas": "0-1", "codec": "best_compression"}},
            "mappings": mappings(),
        },
        "_meta": {"managed_by": "stockade", "version": TEMPLATE_VERSION},
    }


def index_templates() -> dict[str, Document]:
    """One composable template per dataset; priority above the stack's `logs-*-*` (100)."""
    return {
        f"logs-cloud_defend.{dataset}": {
            "index_patterns": [f"logs-cloud_defend.{dataset}-*"],
            "data_stream": {},
            "composed_of": [COMPONENT],
            "priority": 200,
            "_meta": {"managed_by": "stockade", "version": TEMPLATE_VERSION},
        }
        for dataset in DATASETS
    }


class NamespaceError(ValueError):
    """A data-stream namespace Elasticsearch would refuse."""


_NAMESPACE = re.compile(r"[a-z0-9_]{1,100}")


def check_namespace(namespace: str) -> str:
    """Elastic's rules for the namespace part of a data-stream name."""
    if not _NAMESPACE.fullmatch(namespace):
        raise NamespaceError(f"{namespace!r}: a namespace is 1-100 characters of a-z, 0-9 and _")
    return namespace


def route(doc: Document, namespace: str) -> str:
    """The data stream a document goes to (alerts to alerts, events by category); stamps
    its `data_stream.*` and `event.dataset` to match."""
    dataset = "cloud_defend." + (
        "alerts" if doc["event"]["kind"] == "alert" else doc["event"]["category"][0]
    )
    doc["data_stream"] = {"type": "logs", "dataset": dataset, "namespace": namespace}
    doc["event"]["dataset"] = dataset
    return f"logs-{dataset}-{namespace}"


def install(client: Any) -> None:
    """Put the component and index templates (idempotent: PUT replaces with the same)."""
    body = component_template()
    client.cluster.put_component_template(
        name=COMPONENT, template=body["template"], meta=body["_meta"]
    )
    for name, t in index_templates().items():
        client.indices.put_index_template(
            name=name, index_patterns=t["index_patterns"], data_stream=t["data_stream"],
            composed_of=t["composed_of"], priority=t["priority"], meta=t["_meta"],
        )  # fmt: skip
