"""What the operator and the sensor share of the Kubernetes API: the client, list-then-watch.

Both watch with the official (synchronous) client in a daemon thread, without turning
objects into client models: a watched object is the apiserver's JSON as a dict.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

__all__ = ["Body", "ListWatch", "api_client", "backoff"]

Body = Mapping[str, Any]
PAGE = 500
WATCH_SECONDS = 240  # the apiserver ends a watch after this; it is resumed from its version
BACKOFF_FIRST = 1.0  # seconds before the first retry (a write, a watch)
BACKOFF_CAP = 30.0


def api_client(parallel: int) -> client.ApiClient:
    """In-cluster config when running in a pod, else the current kubeconfig."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = parallel
    return client.ApiClient(configuration)


def backoff(attempts: int) -> float:
    """Seconds before retrying after `attempts` failures: doubling up to the cap, with
    jitter (the upper half of the interval) so many failing nodes don't retry in step."""
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** (attempts - 1)) * random.uniform(0.5, 1.0)


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class WatchError(Exception):
    """The apiserver ended the watch with an error event."""


class ListWatch:
    """List (in pages), then watch from the list's resourceVersion, in a daemon thread.

    `call` is a client list method (e.g. `CoreV1Api.list_pod_for_all_namespaces`) and
    `selectors` its namespace/field/label arguments. `on_list(items)` gets every object
    of a full list (also after a 410 lists again); `on_event(type, object)` every ADDED,
    MODIFIED and DELETED after it. Both run in the watch's thread. A watch that fails
    resumes from the last version seen after a back-off; `failures` counts those.
    """

    def __init__(
        self,
        name: str,
        call: Callable[..., Any],
        on_list: Callable[[list[Body]], None],
        on_event: Callable[[str, Body], None],
        *,
        log: logging.Logger,
        stopped: Callable[[], bool] = lambda: False,
        **selectors: str,
    ) -> None:
        self.name = name
        self.call = call
        self.on_list = on_list
        self.on_event = on_event
        self.log = log
        self.selectors = selectors
        self.stopped = stopped
        self.version: str | None = None  # resourceVersion to resume from; None: list
        self.failures = 0  # watches that failed and were resumed, since start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        attempts = 0
        while not self._stop.is_set():
            try:
                if self.version is None:
                    self.version = self._list()
                self._watch()
                attempts = 0
            except Gone:
                self.log.info(f"{self.name} expired: listing again")
                self.version = None
            except Exception as exc:
                if self.stopped():
                    return
                attempts += 1
                self.failures += 1
                delay = backoff(attempts)
                self.log.warning(
                    f"{self.name} failed; resuming",
                    extra={"error": str(exc), "attempts": attempts, "retry": round(delay, 2)},
                )
                self._stop.wait(delay)

    def _list(self) -> str:
        items: list[Body] = []
        token = ""
        while True:
            resp: Any = self.call(
                limit=PAGE, _continue=token or None, _preload_content=False,
                _request_timeout=60, **self.selectors,
            )  # fmt: skip
            page = json.loads(resp.data)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                version = str(meta.get("resourceVersion") or "")
                break
        self.on_list(items)
        return version

    def _watch(self) -> None:
        """Until the apiserver ends the watch; `version` follows every event."""
        resp: Any
        try:
            resp = self.call(
                watch=True, resource_version=self.version, allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS, _preload_content=False,
                _request_timeout=(10, WATCH_SECONDS + 30), **self.selectors,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 410:
                raise Gone from exc
            raise
        try:
            for line in _lines(resp):
                if self._stop.is_set():
                    break
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone
                    raise WatchError(f"{self.name} error: {obj.get('message')}")
                if kind != "BOOKMARK":
                    self.on_event(str(kind), obj)
                self.version = str(
                    (obj.get("metadata") or {}).get("resourceVersion") or self.version
                )
        finally:
            resp.release_conn()


def _lines(resp: Any) -> Iterable[bytes]:
    """The watch response's lines (one JSON event each)."""
    pending = b""
    for chunk in resp.stream(amt=65536, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending
