"""Leader election on a coordination.k8s.io/v1 Lease, client-go's rules, in a thread.

One replica holds the Lease and writes; the others wait in `acquire` before
they watch anything. The holder renews every `retry_period`; when it can't
renew within `renew_deadline` (shorter than `lease_duration`, the time
another replica waits after it last saw the Lease change), or finds the
Lease taken, the process exits: a new leader always starts from fresh lists,
never from indexes that missed what happened while it wasn't leading.
Between a renewal and its deadline, `write_timeout` says how long a write may
take, so no write is in flight once another replica can take over.

Not `kubernetes.leaderelection`: it times the renew deadline with the wall
clock from the start of the retries (not from the last renewal), makes its
calls with no timeout (a hung renewal keeps a replica "leader"), exposes no
time a write could be checked against, and logs a 403 at info and retries
forever, so a Lease the operator may not create is a silent wait.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("stockade.operator")
RBAC = "charts/stockade/templates/operator-rbac.yaml"
EXIT_LOST = 1


class StartupError(Exception):
    """The operator can't start; the one-line message says what to do."""


class NotLeading(Exception):
    """A write was about to start after the renew deadline: it is not made."""


@dataclass(frozen=True)
class Timing:
    """client-go's defaults (kube-controller-manager's --leader-elect-* flags)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise StartupError(
                "leader election needs retry period < renew deadline < lease duration"
                f" (got {self.retry_period}, {self.renew_deadline}, {self.lease_duration})"
            )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lost(reason: str) -> None:
    """client-go's controllers exit when they lose the lease; so does this one."""
    log.error("leadership lost: exiting", extra={"reason": reason})
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_LOST)


class Elector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing,
        on_lost: Callable[[str], None] = _lost,
    ) -> None:
        self.leases = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self.on_lost = on_lost
        self.renewed_at = -1e18  # time.monotonic() when the last successful renewal was sent
        self.lease: dict[str, Any] | None = None  # as last read or written
        self._observed: tuple[Any, float] = (None, 0.0)  # (holder record, when it changed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def _call(self, fn: Callable[..., Any], *args: Any, timeout: float) -> dict[str, Any]:
        resp = fn(*args, _preload_content=False, _request_timeout=max(0.1, timeout))
        body: dict[str, Any] = json.loads(resp.data)
        return body

    def _forbidden(self, verb: str, exc: ApiException) -> StartupError:
        return StartupError(
            f"may not {verb} {self.where} ({exc.status} {exc.reason}): the operator's"
            f" ServiceAccount needs get, create and update on leases in {self.namespace}"
            f" (see {RBAC})"
        )

    def _record(self, holder: str, acquired: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(self.timing.lease_duration)),
            "acquireTime": acquired,
            "renewTime": _now(),
            "leaseTransitions": transitions,
        }

    def try_acquire(self) -> bool:
        """One attempt (client-go's tryAcquireOrRenew for a candidate). Raises
        StartupError when RBAC forbids it: waiting would never end."""
        timeout = self.timing.retry_period
        sent = time.monotonic()
        try:
            lease = self._call(
                self.leases.read_namespaced_lease, self.name, self.namespace, timeout=timeout
            )
        except ApiException as exc:
            if exc.status == 403:
                raise self._forbidden("get", exc) from None
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._record(self.identity, _now(), 0),
            }
            try:
                self.lease = self._call(
                    self.leases.create_namespaced_lease, self.namespace, body, timeout=timeout
                )
            except ApiException as exc2:
                if exc2.status == 403:
                    raise self._forbidden("create", exc2) from None
                if exc2.status == 409:  # another replica created it first
                    return False
                raise
            self.renewed_at = sent
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), lease["metadata"].get("resourceVersion"))
        if record != self._observed[0]:
            self._observed = (record, time.monotonic())
        if holder and time.monotonic() < self._observed[1] + self.timing.lease_duration:
            return False  # held, and renewed within the lease duration as seen from here
        transitions = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        # an int32 in the API: wrap rather than be refused forever at 2**31 (a hand edit)
        lease["spec"] = self._record(self.identity, _now(), transitions % 2**31)
        try:  # the resourceVersion read above is the precondition: one of two racers wins
            self.lease = self._call(
                self.leases.replace_namespaced_lease,
                self.name, self.namespace, lease, timeout=timeout,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 403:
                raise self._forbidden("update", exc) from None
            if exc.status == 409:
                return False
            raise
        self.renewed_at = sent
        return True

    def acquire(self) -> None:
        """Block until this replica holds the Lease (the others' watches aren't started)."""
        waiting_for = None
        while True:
            try:
                if self.try_acquire():
                    log.info("leading", extra={"lease": self.where, "identity": self.identity})
                    return
            except StartupError:
                raise
            except Exception as exc:  # the apiserver unreachable: keep trying, loudly
                log.warning("lease not read", extra={"lease": self.where, "error": str(exc)})
            holder = self._observed[0][0] if self._observed[0] else None
            if holder != waiting_for:
                waiting_for = holder
                log.info("standing by", extra={"lease": self.where, "holder": holder})
            time.sleep(self.timing.retry_period)

    def renew(self) -> str | None:
        """One renewal; returns why leadership is lost, or None."""
        assert self.lease is not None
        left = self.renewed_at + self.timing.renew_deadline - time.monotonic()
        if left <= 0:
            return f"not renewed within the renew deadline ({self.timing.renew_deadline} s)"
        lease = dict(self.lease)
        spec = dict(lease.get("spec") or {})
        spec["renewTime"] = _now()
        lease["spec"] = spec
        sent = time.monotonic()
        try:
            self.lease = self._call(
                self.leases.replace_namespaced_lease,
                self.name, self.namespace, lease, timeout=left,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status in (404, 409):  # deleted, or changed by someone else: not ours
                return f"the Lease was changed by another ({exc.status} {exc.reason})"
            log.warning("lease renewal failed", extra={"lease": self.where, "error": str(exc)})
            return None
        except Exception as exc:
            log.warning("lease renewal failed", extra={"lease": self.where, "error": str(exc)})
            return None
        self.renewed_at = sent
        return None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.timing.retry_period):
            lost = self.renew()
            if lost is None and time.monotonic() > self.renewed_at + self.timing.renew_deadline:
                lost = f"not renewed within the renew deadline ({self.timing.renew_deadline} s)"
            if lost is not None and not self._stop.is_set():
                self.on_lost(lost)
                return

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="stockade lease", daemon=True)
        self._thread.start()

    def write_timeout(self, cap: float) -> float:
        """How long a write starting now may take (at most `cap`): until another
        replica could take the Lease. Raises NotLeading past the renew deadline."""
        now = time.monotonic()
        if now >= self.renewed_at + self.timing.renew_deadline:
            raise NotLeading(f"past the renew deadline of {self.where}")
        return min(cap, self.renewed_at + self.timing.lease_duration - now)

    def release(self) -> None:
        """At a clean exit (all writes done): empty the holder so another takes over now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lease is None or time.monotonic() >= self.renewed_at + self.timing.renew_deadline:
            return
        lease = dict(self.lease)
        lease["spec"] = {**(lease.get("spec") or {}), "holderIdentity": "", "renewTime": _now()}
        try:
            self._call(
                self.leases.replace_namespaced_lease,
                self.name, self.namespace, lease, timeout=self.timing.retry_period,
            )  # fmt: skip
            log.info("lease released", extra={"lease": self.where})
        except Exception as exc:
            log.warning("lease not released", extra={"lease": self.where, "error": str(exc)})
