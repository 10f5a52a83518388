"""Prometheus metrics of the operator (served on --metrics-port)."""

from __future__ import annotations

import urllib.request

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "stockade_operator_reconciles", "Reconcile passes (one pass handles a batch of changes)"
)
BUNDLE_WRITES = Counter(
    "stockade_operator_bundle_writes", "Bundle ConfigMaps written or deleted", ["op"]
)
BUNDLE_BYTES = Histogram(
    "stockade_operator_bundle_bytes",
    "Canonical size of the bundles written",
    buckets=(1024, 4096, 16384, 65536, 131072, 262144, 524288, 1048576),
)
LARGEST_BUNDLE = Gauge("stockade_operator_largest_bundle_bytes", "Largest bundle now written")
COMPILE_SECONDS = Histogram(
    "stockade_operator_compile_seconds",
    "Time to compile one node's bundle",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
)
LEFT_OUT = Gauge(
    "stockade_operator_policies_left_out",
    "Policies left out of a node's bundle that can't hold them (per node: BundleTooLarge)",
)
STATUS_WRITES = Counter("stockade_operator_status_writes", "Policy status writes")
ERRORS = Counter("stockade_operator_errors", "Failed writes (retried)", ["op"])
SYNCED = Gauge("stockade_operator_synced", "1 once the first full reconcile finished")
LEADER = Gauge("stockade_operator_leader", "1 while this replica is the one that writes")


def scrape(port: int, timeout: float = 5.0) -> dict[str, float]:
    """A running operator's samples by `name{labels}` ({} when it doesn't answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
