"""`stockade operator`: run the operator against the current kubeconfig or in-cluster config."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any

import kopf
from prometheus_client import start_http_server

from stockade.operator import kopf_patches
from stockade.operator.handlers import register
from stockade.operator.kube import Kube, api_client
from stockade.operator.pods import PodIndex, PodWatch
from stockade.operator.reconciler import Options, Reconciler

PARALLEL_WRITES = 16


@dataclass(frozen=True)
class Config:
    namespace: str = "stockade-system"
    cluster: str = ""
    log_level: str = "info"
    metrics_port: int = 9090  # 0: no metrics endpoint
    peering: str | None = "stockade-operator"  # None: standalone, no leader election
    priority: int | None = None  # None: random, so two replicas never tie
    resync: float = 300.0


def configure_logging(level: str) -> None:
    """JSON lines on stderr (kopf's formatter), one level for kopf and Stockade."""
    numeric = logging.getLevelName(level.upper())
    kopf.configure(log_format=kopf.LogFormat.JSON, debug=numeric <= logging.DEBUG)
    logging.getLogger().setLevel(numeric)
    # kopf logs every handler call at info: too much with thousands of pods.
    logging.getLogger("kopf").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("kubernetes").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("urllib3").setLevel(max(numeric, logging.WARNING))


def settings(config: Config) -> kopf.OperatorSettings:
    out = kopf.OperatorSettings()
    out.posting.level = logging.WARNING  # our own Events say what matters
    out.peering.standalone = config.peering is None
    if config.peering is not None:
        out.peering.name = config.peering
        out.peering.mandatory = True
        out.peering.clusterwide = True
    return out


async def run(config: Config) -> None:
    priority = config.priority if config.priority is not None else 1 + secrets.randbelow(2**30)
    identity = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
    kube = Kube(api_client(PARALLEL_WRITES), config.namespace, PARALLEL_WRITES)
    reconciler = Reconciler(
        kube,
        Options(
            namespace=config.namespace,
            cluster=config.cluster,
            peering=config.peering,
            identity=identity,
            priority=priority,
            resync=config.resync,
        ),
    )
    kopf_patches.apply()
    pods = PodIndex(on_change=reconciler.pods_changed)
    watch = PodWatch(api_client(2), pods)
    watch.start(asyncio.get_running_loop())
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, pods)
    if config.metrics_port:
        start_http_server(config.metrics_port)
    logging.getLogger("stockade.operator").info(
        "starting",
        extra={
            "namespace": config.namespace,
            "cluster": config.cluster,
            "peering": config.peering,
            "identity": identity,
            "priority": priority,
        },
    )
    options: dict[str, Any] = {}
    if config.peering is not None:
        options = {"identity": identity, "priority": priority, "peering_name": config.peering}
    try:
        await kopf.operator(
            registry=registry,
            settings=settings(config),
            clusterwide=True,
            standalone=config.peering is None,
            **options,
        )
    finally:
        watch.stop()


def main(config: Config) -> int:
    configure_logging(config.log_level)
    asyncio.run(run(config))
    return 0
