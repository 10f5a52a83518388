"""`stockade operator`: run the operator against the current kubeconfig or in-cluster config."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server

from stockade.operator import kopf_patches
from stockade.operator.handlers import register
from stockade.operator.kube import Kube, api_client
from stockade.operator.pods import PodIndex, PodWatch
from stockade.operator.reconciler import Options, Reconciler

PARALLEL_WRITES = 16
PEERING_MANIFEST = "operator/kopf-peering.yaml"
log = logging.getLogger("stockade.operator")


class StartupError(Exception):
    """The operator can't start; the one-line message says what to do."""


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


def ensure_peering(api: client.ApiClient, name: str) -> None:
    """Create the ClusterKopfPeering object if it is missing.

    kopf waits silently, forever, for a peering object that doesn't exist:
    create it, or stop with an error that names what to apply.
    """
    custom = client.CustomObjectsApi(api)
    where = ("kopf.dev", "v1", "clusterkopfpeerings")
    try:
        custom.get_cluster_custom_object(*where, name)
        return
    except ApiException as exc:
        if exc.status != 404:
            raise StartupError(
                f"can't read ClusterKopfPeering {name!r}: {exc.status} {exc.reason}"
            ) from None
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        custom.create_cluster_custom_object(*where, body)
    except ApiException as exc:
        if exc.status == 409:  # another replica created it first
            return
        if exc.status == 404:
            raise StartupError(
                "the ClusterKopfPeering CRD (clusterkopfpeerings.kopf.dev), which leader"
                f" election needs, is not installed: kubectl apply -f {PEERING_MANIFEST}"
                " (or run one replica with --standalone)"
            ) from None
        raise StartupError(
            f"ClusterKopfPeering {name!r} is missing and creating it failed"
            f" ({exc.status} {exc.reason}): kubectl apply -f {PEERING_MANIFEST},"
            " or allow the operator to create clusterkopfpeerings"
        ) from None
    log.info("created the missing ClusterKopfPeering", extra={"peering": name})


async def run(config: Config) -> None:
    priority = config.priority if config.priority is not None else 1 + secrets.randbelow(2**30)
    identity = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
    api = api_client(PARALLEL_WRITES)
    if config.peering is not None:
        ensure_peering(api, config.peering)
    kube = Kube(api, config.namespace, PARALLEL_WRITES)
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
    log.info(
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
    try:
        asyncio.run(run(config))
    except StartupError as exc:
        print(f"stockade operator: {exc}", file=sys.stderr)
        return 1
    return 0
