"""Deliver documents to Elasticsearch without blocking the ring-buffer reader, losing or
duplicating nothing.

The reader calls `write(doc)`: a `put_nowait` on a bounded in-memory queue. One writer
thread takes batches from it (by count, bytes and time) and sends them with bulk
`create` under the document's deterministic `_id` (`event.id`), so a retry of a document
Elasticsearch already holds is answered 409 and counted as delivered. Whatever can't be
delivered now (network errors, timeouts, 429, 5xx, 401/403) goes to the on-disk spool and
is retried in order, head first, with exponential backoff; while the spool holds anything,
new documents queue behind it, and so do they while Elasticsearch indexes slower than the
reader writes (the queue half full). A document refused for its content (400: a mapping error)
goes to the dead-letter file and a counter and is never retried.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from stockade.sensor.ecs import Document, serialize
from stockade.sensor.elastic import templates
from stockade.sensor.elastic.config import ElasticConfig
from stockade.sensor.elastic.spool import Item, Spool

__all__ = ["ElasticOutput"]

BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
SENSOR_LOG = logging.getLogger("stockade.sensor")  # the mode decides how it is written


def _lane(doc: Document) -> str:
    return "alerts" if doc["event"]["kind"] == "alert" else "logs"


def _describe(exc: Exception, url: str) -> str:
    from elastic_transport import ConnectionError, ConnectionTimeout, TransportError
    from elasticsearch import ApiError

    if isinstance(exc, ApiError):
        status = exc.meta.status
        error = exc.body.get("error") if isinstance(exc.body, dict) else None
        reason = error.get("reason") if isinstance(error, dict) else str(exc.message)
        if status == 401:
            return f"authentication failed (401): the API key or password is wrong ({reason})"
        if status == 403:
            return f"not allowed (403): {reason}"
        return f"refused the request ({status}): {reason}"
    if isinstance(exc, ConnectionTimeout):
        return f"no answer from {url} in time"
    if isinstance(exc, ConnectionError):
        return f"can't connect to {url}: {exc.message}"
    if isinstance(exc, TransportError):
        return f"transport error talking to {url}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


class ElasticOutput:
    """The sensor's `elasticsearch:URL` output (see the module docstring)."""

    def __init__(
        self,
        config: ElasticConfig,
        spool_dir: Path,
        spool_max_bytes: int = 1 << 30,
        queue_max: int = 50_000,
        batch_docs: int = 1000,
        batch_bytes: int = 5 << 20,
        flush_s: float = 0.5,
        drain_s: float = 5.0,
        log: logging.Logger = SENSOR_LOG,
    ) -> None:
        self.config = config
        self.client = config.client()
        self.spool = Spool(spool_dir, spool_max_bytes)
        self.dead_letter = spool_dir / "dead-letter.jsonl"
        self.batch_docs, self.batch_bytes, self.flush_s, self.drain_s = (
            batch_docs, batch_bytes, flush_s, drain_s)  # fmt: skip
        self.log = log
        self.queue: queue.Queue[Document] = queue.Queue(queue_max)
        self.queue_dropped: Counter[str] = Counter()  # the reader's only counter
        self.counts: Counter[str] = Counter()  # the writer thread's
        self._templates_done = False
        self._problem: str | None = None  # the failure being reported, until recovery
        self._backoff = 0.0
        self._retry_at = 0.0
        self._stop = threading.Event()
        if self.spool.foreign:
            names = ", ".join(str(p) for p in self.spool.foreign[:3])
            self._say(f"ignoring {len(self.spool.foreign)} files in the spool that aren't its "
                      f"segments: {names}")  # fmt: skip
        if self.spool:
            self._say(
                f"{self.spool.count()} documents spooled from before; draining them", logging.INFO
            )
        self._thread = threading.Thread(target=self._run, name="es-writer", daemon=True)
        self._thread.start()

    def _say(self, message: str, level: int = logging.WARNING) -> None:
        """Through the sensor's logger: a JSON line or a plain one, as the mode logs."""
        self.log.log(level, f"elasticsearch: {message}")

    # -- the reader's side --------------------------------------------------------

    def write(self, doc: Document) -> None:
        """Never blocks: a full queue drops the document (counted per lane)."""
        try:
            self.queue.put_nowait(doc)
        except queue.Full:
            self.queue_dropped[_lane(doc)] += 1

    def flush(self) -> None:
        """Batches go out by size and time from the writer thread; nothing to do here."""

    def stats(self) -> dict[str, int]:
        c = self.counts
        return {
            "es_delivered": c["delivered"],
            "es_duplicates": c["duplicates"],
            "es_dead_letter": c["dead_letter"],
            "es_failed_requests": c["failed_requests"],
            "es_queued": self.queue.qsize(),
            "es_spooled": self.spool.count(),
            "es_spool_bytes": self.spool.size,
            "es_spool_errors": c["spool_errors"],
            "es_dropped_alerts": self.spool.dropped["alerts"] + self.queue_dropped["alerts"],
            "es_dropped_logs": self.spool.dropped["logs"] + self.queue_dropped["logs"],
        }

    def close(self) -> None:
        """Deliver what is queued for up to drain_s, spool the rest, stop the thread."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.client.close()

    # -- the writer thread --------------------------------------------------------

    def _item(self, doc: Document) -> tuple[str, Item]:
        index = templates.route(doc, self.config.namespace)
        source = serialize(doc)
        return _lane(doc), Item(index, doc["event"]["id"], source)

    def _take(self, wait_s: float) -> list[tuple[str, Item]]:
        """A batch from the queue: up to batch_docs/batch_bytes, flush_s after the first."""
        batch: list[tuple[str, Item]] = []
        size = 0
        deadline = time.monotonic() + wait_s
        while len(batch) < self.batch_docs and size < self.batch_bytes:
            try:
                doc = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not batch:
                deadline = time.monotonic() + self.flush_s
            batch.append(self._item(doc))
            size += len(batch[-1][1].source)
        return batch

    def _behind(self) -> bool:
        """The reader writes faster than Elasticsearch indexes: the queue is half full. Its
        backlog then goes to the spool, which a disk takes faster than Elasticsearch
        indexes, rather than fill the queue, which would drop alerts."""
        return self.queue.qsize() >= self.queue.maxsize // 2

    def _to_spool(self, batch: list[tuple[str, Item]]) -> None:
        for lane in ("alerts", "logs"):
            items = [item for la, item in batch if la == lane]
            if not items:
                continue
            try:
                self.spool.append(lane, items)
            except OSError as exc:  # a full or read-only disk: counted drops, said once
                self.spool.dropped[lane] += len(items)
                if self.counts["spool_errors"] == 0:
                    self._say(
                        f"can't write the spool ({exc}); dropping what can't be sent", logging.ERROR
                    )
                self.counts["spool_errors"] += 1

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug: say so rather than die silently; the queue then fills
            self._say(
                f"the writer stopped ({exc!r}); documents are no longer delivered", logging.ERROR
            )
            raise

    def _loop(self) -> None:
        deadline: float | None = None
        while True:
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + self.drain_s
            batch = self._take(0.05 if self.spool or deadline else self.flush_s)
            if batch:
                if self.spool or self._behind():  # keep order: behind what waits
                    self._to_spool(batch)
                    while self._behind():
                        self._to_spool(self._take(0))
                else:
                    again = {id(i) for i in self._deliver([i for _, i in batch])}
                    self._to_spool([(la, i) for la, i in batch if id(i) in again])
            if self.spool and time.monotonic() >= self._retry_at:
                lane, head = self.spool.head(self.batch_docs)
                for line in self.spool.take_unreadable():
                    self._dead_letter_line(line)
                if head:
                    self.spool.settle(lane, len(head), self._deliver(head))
            if (
                deadline is not None
                and self.queue.empty()
                and (not self.spool or time.monotonic() >= deadline)
            ):
                return

    def _deliver(self, items: list[Item]) -> list[Item]:
        """Send one bulk request; the items to try again later (in order)."""
        body = b"".join(
            b'{"create":{"_index":"%s","_id":"%s"}}\n%s\n' % (i.index.encode(), i.id.encode(),
                                                              i.source)
            for i in items
        )  # fmt: skip
        try:
            if not self._templates_done:
                self._install_templates()
            response = self.client.bulk(operations=[body])  # bytes pass through as NDJSON
        except Exception as exc:  # every failure of the request is retried
            self._failed(_describe(exc, self.config.url))
            if getattr(getattr(exc, "meta", None), "status", None) in (401, 403):
                self._reread_secrets()
            return items
        again: list[Item] = []
        refused: list[str] = []
        for item, result in zip(items, response["items"], strict=True):
            r = result["create"]
            status = r["status"]
            if status in (200, 201):
                self.counts["delivered"] += 1
            elif status == 409:
                self.counts["delivered"] += 1
                self.counts["duplicates"] += 1
            elif status == 400:
                self._dead_letter(item, r)
            else:
                again.append(item)
                refused.append(f"{status} {r.get('error', {}).get('type', '')}".strip())
        if again:
            self._failed(f"refused {len(again)} of {len(items)} documents ({refused[0]})")
        else:
            self._recovered()
        return again

    def _reread_secrets(self) -> None:
        """After an authentication failure: a rotated Secret file is used from the next try."""
        fresh = self.config.reread_secrets()
        if fresh != self.config:
            self._say("the credentials changed on disk; using them", logging.INFO)
            self.config = fresh
            self.client.close()
            self.client = fresh.client()

    def _install_templates(self) -> None:
        from elasticsearch import AuthorizationException

        try:
            templates.install(self.client)
        except AuthorizationException as exc:
            self._say(
                f"can't install the index templates ({_describe(exc, self.config.url)}); "
                "run `stockade es-setup` as a user that may manage index templates. "
                "Writing without installing them"
            )
        self._templates_done = True

    def _dead_letter(self, item: Item, result: dict[str, Any]) -> None:
        error = result.get("error", {})
        self.counts["dead_letter"] += 1
        if self.counts["dead_letter"] == 1:
            self._say(
                f"refused a document for its content ({error.get('type')}: "
                f"{error.get('reason')}); it and any others go to {self.dead_letter}"
            )
        head = json.dumps({"index": item.index, "id": item.id, "status": result["status"],
                           "error": error}, separators=(",", ":"))  # fmt: skip
        with self.dead_letter.open("ab") as f:
            f.write(head[:-1].encode() + b',"document":' + item.source + b"}\n")

    def _dead_letter_line(self, line: bytes) -> None:
        """A spool line that isn't a document: kept in the dead-letter file, never resent."""
        if self.counts["unreadable_spool_lines"] == 0:
            self._say(f"a spool line is not a document; set aside in {self.dead_letter}")
        self.counts["dead_letter"] += 1
        self.counts["unreadable_spool_lines"] += 1
        entry = {"error": "not a spooled document", "line": line.decode(errors="replace")}
        with self.dead_letter.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def _failed(self, problem: str) -> None:
        self.counts["failed_requests"] += 1
        if problem != self._problem:
            self._say(f"{problem}; spooling to {self.spool.directory} and retrying")
            self._problem = problem
        self._backoff = min(BACKOFF_MAX_S, self._backoff * 2 or BACKOFF_FIRST_S)
        self._retry_at = time.monotonic() + self._backoff

    def _recovered(self) -> None:
        if self._problem is not None:
            self._say(f"delivering again ({self.spool.count()} documents spooled)", logging.INFO)
            self._problem = None
        self._backoff = 0.0
