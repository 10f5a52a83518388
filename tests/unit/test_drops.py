"""Every drop counts: the output's losses join the kernel's in the sensor's `dropped` (the
NodePolicyReport's droppedEvents) and in /metrics by reason."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from stockade.sensor.ecs import document
from stockade.sensor.elastic.config import ElasticConfig
from stockade.sensor.elastic.writer import ElasticOutput
from stockade.sensor.enforcer import drops
from stockade.sensor.serve import serve

from ..elastic.records import HOST, process_record


def closed_port() -> int:
    """A loopback port nothing listens on: Elasticsearch is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_full_spool_and_a_full_queue_are_drops_by_reason(tmp_path: Path) -> None:
    out = ElasticOutput(
        ElasticConfig(f"http://127.0.0.1:{closed_port()}", request_timeout=1.0),
        tmp_path / "spool", spool_max_bytes=16 << 10, queue_max=100, flush_s=0.05,
    )  # fmt: skip
    try:
        for seq in range(300):  # a burst: the queue (100) overflows before the writer runs
            out.write(document(process_record(seq), None, "kill", HOST))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every document spooled or dropped
            stats = {**out.stats(), "rb_fail": 2, "inflight_fail": 0, "undecodable": 1}
            if stats["es_spooled"] + stats["es_dropped_logs"] == 300:
                break
            time.sleep(0.1)
    finally:
        out.close()
    lost = drops(stats)
    assert stats["es_spooled"] + lost["es_dropped_logs"] == 300, stats  # nothing uncounted
    assert lost["es_dropped_logs"] > 100 and stats["es_delivered"] == 0, stats
    assert lost == {"rb_fail": 2, "inflight_fail": 0, "undecodable": 1, "es_dead_letter": 0,
                    "es_dropped_alerts": 0, "es_dropped_logs": lost["es_dropped_logs"]}  # fmt: skip
    total = sum(lost.values())
    node = SimpleNamespace(
        stats=lambda: {**stats, "dropped": total}, records={}, applies=0, last_apply_s=0.0,
        counts={"refused": 0}, table=SimpleNamespace(listed={}), watches=[], ready=True,
        heartbeat=time.monotonic(),
    )  # fmt: skip
    server = serve(node, 0, host="127.0.0.1")  # type: ignore[arg-type]
    try:
        port = server.server_address[1]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        server.shutdown()
    lines = [line.rsplit(" ", 1) for line in text.splitlines()]
    metrics = {k: float(v) for k, v in lines if k.startswith("stockade_sensor_dropped_total")}
    assert metrics == {f'stockade_sensor_dropped_total{{reason="{r}"}}': n for r, n in lost.items()}
    assert sum(metrics.values()) == total
