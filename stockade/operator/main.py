"""`stockade operator`: run the operator against the current kubeconfig or in-cluster config."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
from dataclasses import dataclass, field

import kopf
from prometheus_client import start_http_server

from stockade.kube import api_client
from stockade.operator import kopf_patches, metrics
from stockade.operator.election import Elector, StartupError, Timing
from stockade.operator.handlers import register
from stockade.operator.heartbeats import DEFAULT_AFTER
from stockade.operator.kube import DEFAULT_WRITERS, Kube
from stockade.operator.pods import PodIndex, PodWatch
from stockade.operator.reconciler import Options, Reconciler

log = logging.getLogger("stockade.operator")


@dataclass(frozen=True)
class Config:
    namespace: str = "stockade-system"
    cluster: str = ""
    log_level: str = "info"
    metrics_port: int = 9090  # 0: no metrics endpoint
    lease: str | None = "stockade-operator"  # in `namespace`; None: standalone, no election
    timing: Timing = field(default_factory=Timing)
    resync: float = 300.0
    sensor_silent_after: float = DEFAULT_AFTER
    writers: int = DEFAULT_WRITERS  # apiserver calls in flight at most


def configure_logging(level: str) -> None:
    """JSON lines on stderr (kopf's formatter), one level for kopf and Stockade."""
    numeric = logging.getLevelName(level.upper())
    kopf.configure(log_format=kopf.LogFormat.JSON, debug=numeric <= logging.DEBUG)
    logging.getLogger().setLevel(numeric)
    # kopf logs every handler call at info: too much with thousands of pods.
    logging.getLogger("kopf").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("kubernetes").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("urllib3").setLevel(max(numeric, logging.WARNING))


def settings() -> kopf.OperatorSettings:
    """kopf watches and calls handlers; the Lease (`election`) decides who runs it, and
    nothing kopf would write (peering, Events) bypasses that."""
    out = kopf.OperatorSettings()
    out.peering.standalone = True
    out.posting.enabled = False  # our own Events say what matters, written as the leader
    return out


async def run(config: Config, elector: Elector | None) -> None:
    api = api_client(config.writers)
    kube = Kube(api, config.namespace, config.writers)
    if elector is not None:
        kube.write_timeout = elector.write_timeout
    reconciler = Reconciler(
        kube,
        Options(
            namespace=config.namespace,
            cluster=config.cluster,
            resync=config.resync,
            sensor_silent_after=config.sensor_silent_after,
        ),
    )
    kopf_patches.apply()
    pods = PodIndex(on_change=reconciler.pods_changed)
    watch = PodWatch(api_client(2), pods)
    watch.start(asyncio.get_running_loop())
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, pods)
    try:
        await kopf.operator(
            registry=registry, settings=settings(), clusterwide=True, standalone=True
        )
    finally:
        watch.stop()
        await asyncio.to_thread(kube.close)  # every write done before the Lease is released


def main(config: Config) -> int:
    """Stand by until this replica holds the Lease, then run until SIGTERM (exit 0, the
    Lease released) or until the Lease is lost (exit 1, at once: `election`)."""
    configure_logging(config.log_level)
    identity = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
    try:
        if config.metrics_port:
            start_http_server(config.metrics_port)
        log.info(
            "starting",
            extra={
                "namespace": config.namespace,
                "cluster": config.cluster,
                "lease": config.lease,
                "identity": identity,
            },
        )
        elector = None
        if config.lease is not None:
            elector = Elector(
                api_client(2), config.namespace, config.lease, identity, config.timing
            )
            elector.acquire()
            elector.start_renewing()
        metrics.LEADER.set(1)
        asyncio.run(run(config, elector))
        if elector is not None:  # every write is done (`run` closed `kube`)
            elector.release()
    except StartupError as exc:
        print(f"stockade operator: {exc}", file=sys.stderr)
        return 1
    return 0
