"""The few API calls the operator writes with, run in threads off the event loop.

kopf reads (watches); this writes. The official client is synchronous, so
each call runs in one of `parallel` threads of the operator's own (not
asyncio's default executor, which has min(32, CPUs + 4) threads: 6 on 2
cores, whatever `parallel` says). Every write carries a request timeout and a
resourceVersion precondition where the object exists, and is checked against
the Lease right before it is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from stockade.operator.bundles import (
    CLUSTER_ANNOTATION,
    NODE_ANNOTATION,
    SELECTOR,
    payload_digest,
)
from stockade.policy.bundle import HASH_ANNOTATION
from stockade.policy.resources import GROUP, VERSION

T = TypeVar("T")
log = logging.getLogger("stockade.operator")
WRITE_TIMEOUT = 10.0  # seconds; shortened to the lease's remaining time when electing
READ_TIMEOUT = 30.0
DEFAULT_WRITERS = 16  # calls in flight (`--write-concurrency`)
LIST_PAGE = 100  # bundle ConfigMaps per page (~40 KiB each)
JSON_PATCH = "application/json-patch+json"
PLURALS = {
    "ContainerPolicy": "containerpolicies",
    "ClusterContainerPolicy": "clustercontainerpolicies",
}


def _written(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """Call without turning the response into client models (a bundle's is ~40 KiB of
    JSON that nobody reads); returns the new resourceVersion. Errors raise ApiException."""
    resp = fn(*args, _preload_content=False, **kwargs)
    try:
        version: str = json.loads(resp.data).get("metadata", {}).get("resourceVersion", "")
    finally:
        resp.release_conn()
    return version


def _unlimited(cap: float) -> float:
    return cap


@dataclass(frozen=True)
class Stored:
    """A bundle ConfigMap as listed: `hash` as its annotation says, `digest` of its content."""

    name: str
    hash: str
    owner_uid: str
    cluster: str
    version: str  # metadata.resourceVersion: the precondition of the next replace
    digest: str  # `payload_digest` of its content


class Kube:
    """`parallel`: calls in flight at most (threads; the client's connection pool must
    hold as many). `write_timeout(cap)`: how long a write starting now may take, at
    most `cap`; raises `election.NotLeading` when no write may start (checked in the
    thread, right before the call). `close()` waits for the calls in flight."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        parallel: int = DEFAULT_WRITERS,
        write_timeout: Callable[[float], float] = _unlimited,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.write_timeout = write_timeout
        self._threads = ThreadPoolExecutor(parallel, thread_name_prefix="stockade-write")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for the calls in flight (before the Lease is released), start no more."""
        self._threads.shutdown(wait=True)

    async def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        def guarded() -> str:
            timeout = self.write_timeout(WRITE_TIMEOUT)
            return _written(fn, *args, _request_timeout=timeout, **kwargs)

        return await self._call(guarded)

    def _configmaps(self, selector: str) -> Iterator[dict[str, Any]]:
        """The ConfigMaps `selector` selects in the namespace, as JSON, listed in pages
        (one page in memory at a time: bundles are ~40 KiB each); blocking."""
        token = ""
        while True:
            resp: Any = self.core.list_namespaced_config_map(
                self.namespace, label_selector=selector, limit=LIST_PAGE,
                _continue=token or None, _preload_content=False,
                _request_timeout=READ_TIMEOUT,
            )  # fmt: skip
            page = json.loads(resp.data)
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    async def configmaps(self, selector: str) -> list[dict[str, Any]]:
        return await self._call(lambda: list(self._configmaps(selector)))

    async def stored_bundles(self) -> dict[str, Stored]:
        """node → its bundle ConfigMap as stored (listed and digested in a worker thread)."""
        return await self._call(self._stored_bundles)

    def _stored_bundles(self) -> dict[str, Stored]:
        out: dict[str, Stored] = {}
        for cm in self._configmaps(SELECTOR):
            meta = cm["metadata"]
            annotations = meta.get("annotations") or {}
            node = annotations.get(NODE_ANNOTATION)
            if not node:
                continue
            owners = meta.get("ownerReferences") or []
            out[node] = Stored(
                meta["name"],
                annotations.get(HASH_ANNOTATION, ""),
                owners[0].get("uid", "") if owners else "",
                annotations.get(CLUSTER_ANNOTATION, ""),
                meta.get("resourceVersion", ""),
                payload_digest(cm.get("data"), cm.get("binaryData")),
            )
        return out

    async def put_configmap(self, body: dict[str, Any], version: str | None) -> str:
        """Create (`version` None), or replace whole (so a switch to gzip drops the plain
        key) on condition that it is still at `version`; returns the new resourceVersion.

        A create that finds one, or a replace that finds none, tries the other way once;
        a replace of a ConfigMap changed since `version` fails with 409 Conflict.
        """
        name = body["metadata"]["name"]
        core = self.core
        if version is None:
            try:
                return await self._write(core.create_namespaced_config_map, self.namespace, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            current: Any = await self._call(
                core.read_namespaced_config_map, name, self.namespace,
                _request_timeout=READ_TIMEOUT,
            )  # fmt: skip
            version = str(current.metadata.resource_version)
        conditional = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
        try:
            return await self._write(
                core.replace_namespaced_config_map, name, self.namespace, conditional
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        return await self._write(core.create_namespaced_config_map, self.namespace, body)

    async def delete_configmap(self, name: str, version: str | None) -> None:
        """Delete, on condition that it is still at `version` (when known)."""
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version=version) if version else None
        )
        try:
            await self._write(
                self.core.delete_namespaced_config_map, name, self.namespace, body=options
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def put_policy_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any], version: str
    ) -> str:
        """Replace status whole (a JSON patch `add` creates or replaces it), on condition
        that the policy is still at `version` (409 Conflict otherwise); returns the new one."""
        patch: list[dict[str, Any]] = [{"op": "add", "path": "/status", "value": status}]
        if version:
            patch.insert(
                0, {"op": "replace", "path": "/metadata/resourceVersion", "value": version}
            )
        if namespace:
            return await self._write(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, PLURALS[kind], name, patch,
                _content_type=JSON_PATCH,
            )  # fmt: skip
        return await self._write(
            self.custom.patch_cluster_custom_object_status,
            GROUP, VERSION, PLURALS[kind], name, patch,
            _content_type=JSON_PATCH,
        )  # fmt: skip

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
        await self._write(self.core.create_namespaced_event, where, body)
