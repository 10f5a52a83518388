"""The Kubernetes sensor's HTTP endpoints: /healthz, /readyz and Prometheus /metrics.

Metrics are read from the sensor's own counters when scraped (a custom collector), so the
record loop pays nothing per record for them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stockade.sensor.enforcer import drops

if TYPE_CHECKING:
    from stockade.sensor.node import NodeSensor

__all__ = ["serve"]

STALL_S = 30.0  # /healthz fails when the record loop hasn't turned for this long
CLIENT_TIMEOUT_S = 5.0  # a client silent this long is closed (each one holds a thread)


class _Sensor(Collector):
    def __init__(self, node: NodeSensor) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        stats = node.stats()
        records = CounterMetricFamily(
            "stockade_sensor_records", "Records written as documents", labels=["kind", "outcome"]
        )
        for (kind, outcome), n in sorted(dict(node.records).items()):
            records.add_metric([kind, outcome], n)
        yield records
        lost = CounterMetricFamily(
            "stockade_sensor_ring_lost", "Records the kernel couldn't put in a ring buffer"
        )
        lost.add_metric([], stats["rb_fail"] + stats.get("cgroup_fail", 0))
        yield lost
        dropped = CounterMetricFamily(
            "stockade_sensor_dropped",
            "Events lost since start, by reason (their sum is the report's droppedEvents)",
            labels=["reason"],
        )
        for reason, n in drops(stats).items():
            dropped.add_metric([reason], n)
        yield dropped
        applies = CounterMetricFamily(
            "stockade_sensor_bundle_applies", "Bundles applied (written and flipped into force)"
        )
        applies.add_metric([], node.applies)
        yield applies
        last = GaugeMetricFamily(
            "stockade_sensor_bundle_apply_seconds", "How long the last bundle took to apply"
        )
        last.add_metric([], node.last_apply_s)
        yield last
        refused = CounterMetricFamily("stockade_sensor_bundles_refused", "Bundles refused")
        refused.add_metric([], node.counts["refused"])
        yield refused
        known = GaugeMetricFamily("stockade_sensor_containers", "Cgroups of known pods, listed")
        known.add_metric([], len(node.table.listed))
        yield known
        restarts = CounterMetricFamily(
            "stockade_sensor_watch_restarts", "Apiserver watches resumed after a failure",
            labels=["watch"],
        )  # fmt: skip
        for watch in node.watches:
            restarts.add_metric([watch.name], watch.failures)
        yield restarts
        ready = GaugeMetricFamily(
            "stockade_sensor_ready", "1 once a bundle is in force for the containers known"
        )
        ready.add_metric([], 1.0 if node.ready else 0.0)
        yield ready


def serve(node: NodeSensor, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve the endpoints in a daemon thread; returns the server (`shutdown()` stops it)."""
    registry = CollectorRegistry()
    registry.register(_Sensor(node))

    class Handler(BaseHTTPRequestHandler):
        timeout = CLIENT_TIMEOUT_S

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
            elif path == "/healthz":
                stalled = time.monotonic() - node.heartbeat > STALL_S
                self._send(503 if stalled else 200, b"stalled\n" if stalled else b"ok\n")
            elif path == "/readyz":
                ready = node.ready
                self._send(
                    200 if ready else 503,
                    b"ok\n" if ready else b"not enforcing for the node's containers yet\n",
                )
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds: not worth a log line each

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="stockade http", daemon=True).start()
    return server
