"""The few API calls the operator writes with, run in threads off the event loop.

kopf reads (watches); this writes. The official client is synchronous, so
each call runs in a worker thread, at most `parallel` at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from stockade.operator.bundles import CLUSTER_ANNOTATION, NODE_ANNOTATION, SELECTOR
from stockade.policy.bundle import HASH_ANNOTATION
from stockade.policy.resources import GROUP, VERSION

T = TypeVar("T")
JSON_PATCH = "application/json-patch+json"
PLURALS = {
    "ContainerPolicy": "containerpolicies",
    "ClusterContainerPolicy": "clustercontainerpolicies",
}


def api_client(parallel: int) -> client.ApiClient:
    """In-cluster config when running in a pod, else the current kubeconfig."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = parallel
    return client.ApiClient(configuration)


def _unread(fn: Callable[..., Any], *args: Any) -> None:
    """Call without turning the response into client models (a bundle's is ~40 KiB of
    JSON that nobody reads); errors still raise ApiException."""
    resp = fn(*args, _preload_content=False)
    resp.data  # noqa: B018 - read it all: frees the pooled connection
    resp.release_conn()


class Kube:
    def __init__(self, api: client.ApiClient, namespace: str, parallel: int = 16) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self._slots = asyncio.Semaphore(parallel)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._slots:
            return await asyncio.to_thread(fn, *args, **kwargs)

    async def bundle_hashes(self) -> dict[str, tuple[str, str, str, str]]:
        """node → (ConfigMap name, bundle hash, owner uid, cluster) of the stored bundles."""
        found = await self._call(
            self.core.list_namespaced_config_map, self.namespace, label_selector=SELECTOR
        )
        out: dict[str, tuple[str, str, str, str]] = {}
        for cm in found.items:
            meta = cm.metadata
            assert meta is not None and meta.name is not None
            annotations = meta.annotations or {}
            node = annotations.get(NODE_ANNOTATION)
            owners = meta.owner_references or []
            if node:
                owner = owners[0].uid if owners else ""
                out[node] = (
                    meta.name,
                    annotations.get(HASH_ANNOTATION, ""),
                    owner,
                    annotations.get(CLUSTER_ANNOTATION, ""),
                )
        return out

    async def put_configmap(self, body: dict[str, Any], exists: bool = False) -> None:
        """Create, or replace whole (so a switch to gzip drops the plain key).

        `exists`: the ConfigMap is known to be there, so replace first (one call, not a
        failed create and a replace); either way the other call follows if the first misses.
        """
        name = body["metadata"]["name"]
        create = (self.core.create_namespaced_config_map, (self.namespace, body), 409)
        replace = (self.core.replace_namespaced_config_map, (name, self.namespace, body), 404)
        first, then = (replace, create) if exists else (create, replace)
        try:
            await self._call(_unread, first[0], *first[1])
        except ApiException as exc:
            if exc.status != first[2]:
                raise
            await self._call(_unread, then[0], *then[1])

    async def delete_configmap(self, name: str) -> None:
        try:
            await self._call(self.core.delete_namespaced_config_map, name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def put_policy_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        """Replace status whole (a JSON patch `add` creates or replaces it)."""
        patch = [{"op": "add", "path": "/status", "value": status}]
        if namespace:
            await self._call(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, PLURALS[kind], name, patch,
                _content_type=JSON_PATCH,
            )  # fmt: skip
        else:
            await self._call(
                self.custom.patch_cluster_custom_object_status,
                GROUP, VERSION, PLURALS[kind], name, patch,
                _content_type=JSON_PATCH,
            )  # fmt: skip

    async def peers(self, peering: str) -> dict[str, Any]:
        """The live peers kopf records on the ClusterKopfPeering object."""
        try:
            obj: Any = await self._call(
                self.custom.get_cluster_custom_object,
                "kopf.dev", "v1", "clusterkopfpeerings", peering,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return {}
            raise
        status: dict[str, Any] = obj.get("status") or {}
        return status

    async def event(
        self,
        kind: str,
        namespace: str,
        name: str,
        uid: str,
        reason: str,
        message: str,
        component: str,
    ) -> None:
        """A Warning Event on a policy (cluster-scoped ones get theirs in `default`)."""
        now = datetime.now(UTC)
        where = namespace or "default"
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}.", namespace=where),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=kind,
                name=name,
                namespace=namespace or None,
                uid=uid,
            ),
            reason=reason,
            message=message[:1024],
            type="Warning",
            source=client.V1EventSource(component=component),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        await self._call(self.core.create_namespaced_event, where, body)
