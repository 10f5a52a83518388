"""The Elasticsearch output against the real Elasticsearch: data streams and templates,
outages without loss or duplicates, dead letters, a full spool."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from stockade.sensor.elastic import templates

from .conftest import OutputFactory, logged, start_elasticsearch, stop_elasticsearch, wait_delivered
from .records import docs

pytestmark = pytest.mark.integration


def search(es: Elasticsearch, index: str, **kw: Any) -> Any:
    es.indices.refresh(index=index, ignore_unavailable=True)
    return es.search(index=index, **kw)


def count(es: Elasticsearch, index: str) -> int:
    es.indices.refresh(index=index, ignore_unavailable=True)
    n: int = es.count(index=index)["count"]
    return n


def seqs_in_index_order(es: Elasticsearch, index: str) -> list[int]:
    """The synthetic docs' sequence numbers (args[1]) in the order Elasticsearch indexed them."""
    hits = search(es, index, size=10_000, sort=["_seq_no"], seq_no_primary_term=True)
    return [int(h["_source"]["process"]["args"][1]) for h in hits["hits"]["hits"]]


def test_documents_land_in_their_data_streams(
    es: Elasticsearch, output: OutputFactory, namespace: str
) -> None:
    out = output()
    for d in docs(30) + docs(20, alert=True, start=30):
        out.write(d)
    assert wait_delivered(out, 50)["es_delivered"] == 50
    streams = {s["name"]: s for s in es.indices.get_data_stream(
        name=f"logs-cloud_defend.*-{namespace}")["data_streams"]}  # fmt: skip
    assert set(streams) == {f"logs-cloud_defend.process-{namespace}",
                            f"logs-cloud_defend.alerts-{namespace}"}  # fmt: skip
    alerts = search(es, f"logs-cloud_defend.alerts-{namespace}", size=100)["hits"]["hits"]
    assert len(alerts) == 20
    assert {h["_source"]["event"]["kind"] for h in alerts} == {"alert"}
    assert {h["_id"] for h in alerts} == {h["_source"]["event"]["id"] for h in alerts}
    assert alerts[0]["_source"]["data_stream"] == {
        "type": "logs", "dataset": "cloud_defend.alerts", "namespace": namespace}  # fmt: skip
    mapping = es.indices.get_mapping(index=f"logs-cloud_defend.process-{namespace}")
    props = next(iter(mapping.values()))["mappings"]["properties"]
    assert props["process"]["properties"]["start"] == {"type": "date"}
    assert props["process"]["properties"]["pid"] == {"type": "long"}
    # the same documents again (a replay): 409s, counted delivered, nothing duplicated
    for d in docs(30):
        out.write(d)
    s = wait_delivered(out, 80)
    assert (s["es_delivered"], s["es_duplicates"]) == (80, 30)
    assert count(es, f"logs-cloud_defend.process-{namespace}") == 30


def test_templates_install_is_idempotent(es: Elasticsearch, services_env: dict[str, str]) -> None:
    from .conftest import config

    client = config(services_env, "default").client()
    try:
        templates.install(client)
        templates.install(client)
    finally:
        client.close()
    got = es.indices.get_index_template(name="logs-cloud_defend.*")["index_templates"]
    assert sorted(t["name"] for t in got) == [f"logs-cloud_defend.{d}" for d in
                                               ("alerts", "file", "process")]  # fmt: skip
    assert {t["index_template"]["_meta"]["version"] for t in got} == {templates.TEMPLATE_VERSION}


def test_rejected_document_goes_to_dead_letter_others_delivered(
    es: Elasticsearch, output: OutputFactory, namespace: str, tmp_path: Path
) -> None:
    out = output()
    batch = docs(10, alert=True)
    batch[4]["process"]["pid"] = "not-a-number"  # a long in the mapping
    for d in batch:
        out.write(d)
    s = wait_delivered(out, 10)
    assert (s["es_delivered"], s["es_dead_letter"]) == (9, 1)
    [dead] = [json.loads(line) for line in (tmp_path / "spool" / "dead-letter.jsonl").open()]
    assert dead["status"] == 400
    assert dead["error"]["type"] == "document_parsing_exception"
    assert dead["document"]["event"]["id"] == batch[4]["event"]["id"] == dead["id"]
    assert "refused a document for its content (document_parsing_exception" in logged(out)
    index = f"logs-cloud_defend.alerts-{namespace}"
    assert seqs_in_index_order(es, index) == [0, 1, 2, 3, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("restart", [False, True], ids=["same-sensor", "sensor-restarted"])
def test_elasticsearch_down_during_a_burst_loses_and_duplicates_nothing(
    es: Elasticsearch, services_env: dict[str, str], output: OutputFactory, namespace: str,
    restart: bool,
) -> None:  # fmt: skip
    out = output()
    burst = docs(2000, alert=True)
    for d in burst[:500]:
        out.write(d)
    try:
        stop_elasticsearch(services_env)
        for i, d in enumerate(burst[500:]):
            out.write(d)
            if i % 100 == 0:
                time.sleep(0.01)  # a burst, not one batch
        deadline = time.monotonic() + 30
        while out.stats()["es_spooled"] == 0:
            assert time.monotonic() < deadline, out.stats()
            time.sleep(0.1)
        said = ""
        if restart:
            out.close()  # the sensor stops while Elasticsearch is down: all of it spooled
            assert out.stats()["es_spooled"] > 0 and out.stats()["es_queued"] == 0
            said = logged(out)
            out = output()  # a head batch committed in part is replayed whole: >= spooled
            assert re.search(r"\d+ documents spooled from before; draining", logged(out))
    finally:
        start_elasticsearch()
    s = wait_delivered(out, 1 if restart else 2000)
    assert s["es_dropped_alerts"] == s["es_dropped_logs"] == s["es_dead_letter"] == 0
    said += logged(out)
    assert "spooling to" in said and "delivering again" in said, said
    seqs = seqs_in_index_order(es, f"logs-cloud_defend.alerts-{namespace}")
    assert sorted(seqs) == list(range(2000))  # each alert exactly once
    # in order, unless a bulk request was refused in part as Elasticsearch went down (the
    # refused documents are retried first, after those of the same request it took)
    assert seqs == list(range(2000)) or "documents (" in said, said


def test_a_reader_faster_than_indexing_loses_no_alert_the_backlog_waits_in_the_spool(
    es: Elasticsearch, output: OutputFactory, namespace: str
) -> None:
    """120,000 alerts at ~20,000/s for 6 s, more than Elasticsearch indexes here, into the
    sensor's queue of 50,000: without the spool the queue overflows and drops alerts."""
    out = output()
    alerts = docs(20_000, alert=True)  # each written 6 times: a replay is a 409, delivered
    for _ in range(6):
        for i in range(0, len(alerts), 200):
            for d in alerts[i : i + 200]:
                out.write(d)
            time.sleep(0.01)
    final = ("es_delivered", "es_dead_letter", "es_dropped_alerts")
    deadline = time.monotonic() + 300
    while sum((s := out.stats())[k] for k in final) < 6 * len(alerts):
        assert time.monotonic() < deadline, s
        time.sleep(0.2)
    assert s["es_dropped_alerts"] == 0, s
    assert count(es, f"logs-cloud_defend.alerts-{namespace}") == len(alerts)


def test_full_spool_drops_logs_before_alerts_and_counts_both(
    es: Elasticsearch, services_env: dict[str, str], output: OutputFactory, namespace: str
) -> None:
    logs, alerts = docs(300), docs(150, alert=True, start=300)
    room = 200 * (len(json.dumps(alerts[0], separators=(",", ":"))) + 120)  # ~200 documents
    nobody = services_env["ELASTICSEARCH_URL"].split(":")[0] + "://127.0.0.1:9"  # refused
    down = output(url=nobody, spool_max_bytes=room, drain_s=0.5)
    for d in logs + alerts:
        down.write(d)
    down.close()
    s = down.stats()
    assert s["es_dropped_logs"] > 100 and s["es_dropped_alerts"] == 0, s
    assert s["es_spooled"] == 450 - s["es_dropped_logs"]
    assert f"can't connect to {nobody}" in logged(down)
    more = docs(100, alert=True, start=450)  # no room left for logs to give: alerts dropped
    down = output(url=nobody, spool_max_bytes=room, drain_s=0.5)
    for d in more:
        down.write(d)
    down.close()
    s = down.stats()
    assert s["es_dropped_alerts"] > 0, s
    kept = s["es_spooled"]
    up = output(spool_max_bytes=room)  # the cluster is back: the spool drains
    assert wait_delivered(up, kept)["es_delivered"] == kept
    alerts_index = f"logs-cloud_defend.alerts-{namespace}"
    assert seqs_in_index_order(es, alerts_index) == list(range(300, 550 - s["es_dropped_alerts"]))
    assert count(es, f"logs-cloud_defend.*-{namespace}") == kept
