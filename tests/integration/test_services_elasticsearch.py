"""Proof that the dev/test Elasticsearch is real and does what the sensor needs:
index templates for ``logs-cloud_defend.*`` data streams, bulk ``create``
writes, search, and mapping conflicts rejected with a clear error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from elasticsearch import BadRequestError, Elasticsearch, NotFoundError

pytestmark = pytest.mark.integration

DATA_STREAM = "logs-cloud_defend.process-default"

TEMPLATE_BODY: dict[str, Any] = {
    "index_patterns": ["logs-cloud_defend.*"],
    "data_stream": {},
    # Above the stack's logs-*-* template (priority 100) where that exists.
    "priority": 500,
    "template": {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "@timestamp": {"type": "date"},
                "event": {
                    "properties": {
                        "action": {"type": "keyword"},
                        "kind": {"type": "keyword"},
                    }
                },
                "process": {
                    "properties": {
                        "pid": {"type": "long"},
                        "name": {"type": "keyword"},
                        "executable": {"type": "keyword"},
                    }
                },
                "orchestrator": {
                    "properties": {"resource": {"properties": {"name": {"type": "keyword"}}}}
                },
            },
        },
    },
    "_meta": {"managed_by": "stockade-tests"},
}


def _delete_data_stream(es: Elasticsearch, name: str) -> None:
    with contextlib.suppress(NotFoundError):
        es.indices.delete_data_stream(name=name)


@pytest.fixture
def cloud_defend_template(es: Elasticsearch, unique: str) -> Iterator[str]:
    """Install an index template for logs-cloud_defend.* data streams; remove
    it and the data stream the tests write to afterwards."""
    name = f"stockade-test-cloud_defend-{unique}"
    _delete_data_stream(es, DATA_STREAM)  # leftover of a killed earlier run
    es.indices.put_index_template(name=name, **TEMPLATE_BODY)
    try:
        yield name
    finally:
        _delete_data_stream(es, DATA_STREAM)
        es.indices.delete_index_template(name=name)


def _event(pid: int, name: str, ts: str) -> dict[str, Any]:
    return {
        "@timestamp": ts,
        "event": {"action": "exec", "kind": "event"},
        "process": {"pid": pid, "name": name, "executable": f"/usr/bin/{name}"},
        "orchestrator": {"resource": {"name": "web-0"}},
    }


def test_cluster_is_real_elasticsearch(es: Elasticsearch) -> None:
    info = es.info()
    assert info["version"]["number"].split(".")[0] == "9"
    assert es.cluster.health(wait_for_status="yellow", timeout="10s")["status"] in (
        "green",
        "yellow",
    )


def test_index_template_installed(es: Elasticsearch, cloud_defend_template: str) -> None:
    got = es.indices.get_index_template(name=cloud_defend_template)["index_templates"]
    assert len(got) == 1
    tmpl = got[0]["index_template"]
    assert tmpl["index_patterns"] == ["logs-cloud_defend.*"]
    assert "data_stream" in tmpl
    # The template resolves for our data stream name.
    sim = es.indices.simulate_index_template(name=DATA_STREAM)
    props = sim["template"]["mappings"]["properties"]
    assert props["process"]["properties"]["pid"]["type"] == "long"


def test_bulk_create_then_search(es: Elasticsearch, cloud_defend_template: str) -> None:
    operations: list[dict[str, Any]] = []
    for i, name in enumerate(["bash", "curl", "bash"]):
        operations += [{"create": {}}, _event(1000 + i, name, f"2026-01-01T00:00:0{i}Z")]
    resp = es.bulk(index=DATA_STREAM, operations=operations, refresh="wait_for")
    assert resp["errors"] is False, resp
    assert all(item["create"]["status"] == 201 for item in resp["items"])
    assert all(item["create"]["_index"].startswith(".ds-" + DATA_STREAM) for item in resp["items"])

    streams = es.indices.get_data_stream(name=DATA_STREAM)["data_streams"]
    assert [s["name"] for s in streams] == [DATA_STREAM]

    hits = es.search(
        index=DATA_STREAM, query={"term": {"process.name": "bash"}}, sort=["process.pid"]
    )["hits"]
    assert hits["total"]["value"] == 2
    assert [h["_source"]["process"]["pid"] for h in hits["hits"]] == [1000, 1002]


def test_conflicting_writes_are_rejected(es: Elasticsearch, cloud_defend_template: str) -> None:
    ok = es.bulk(
        index=DATA_STREAM,
        operations=[{"create": {}}, _event(1, "init", "2026-01-01T00:00:00Z")],
        refresh="wait_for",
    )
    assert ok["errors"] is False, ok

    # A document whose field does not fit the mapping: rejected per item.
    bad = _event(2, "sh", "2026-01-01T00:00:01Z")
    bad["process"]["pid"] = "not-a-number"
    resp = es.bulk(index=DATA_STREAM, operations=[{"create": {}}, bad])
    assert resp["errors"] is True
    error = resp["items"][0]["create"]["error"]
    assert resp["items"][0]["create"]["status"] == 400
    assert error["type"] == "document_parsing_exception"
    assert "failed to parse field [process.pid] of type [long]" in error["reason"]

    # A field the strict mapping does not know.
    unknown = _event(3, "sh", "2026-01-01T00:00:02Z")
    unknown["surprise"] = True
    resp = es.bulk(index=DATA_STREAM, operations=[{"create": {}}, unknown])
    error = resp["items"][0]["create"]["error"]
    assert error["type"] == "strict_dynamic_mapping_exception"
    assert "[surprise]" in error["reason"]

    # Data streams are append-only: op_type index is refused.
    resp = es.bulk(
        index=DATA_STREAM, operations=[{"index": {}}, _event(4, "sh", "2026-01-01T00:00:03Z")]
    )
    assert "op_type of create" in resp["items"][0]["index"]["error"]["reason"]

    # Changing a field's type in place is a mapping conflict.
    with pytest.raises(BadRequestError) as excinfo:
        es.indices.put_mapping(
            index=DATA_STREAM, properties={"process": {"properties": {"pid": {"type": "keyword"}}}}
        )
    assert "mapper [process.pid] cannot be changed from type [long] to [keyword]" in str(
        excinfo.value
    )

    # Nothing but the good document landed.
    es.indices.refresh(index=DATA_STREAM)
    assert es.count(index=DATA_STREAM)["count"] == 1
