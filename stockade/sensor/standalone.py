"""Standalone mode: a policy file and a containers file in, documents out, hot reload.

For hosts without Kubernetes and as the harness the kernel tests drive. Each applied
(policy, containers) pair becomes one kernel generation written through the slot flip
(`KillSensor.prepare` + `activate`): a refused input changes nothing, so the previous
generation stays in force. Records name their generation; the last few applied generations
are kept to name what a record's selector bits meant when it was decided.

A reload never stops the record loop: the inputs are read and compiled in a child process
(`inputs.Reading`, with a memory limit and a time budget) and the result is written into the
inactive slot by a worker thread; the loop only flips the slot. The last applied bundle is
kept in the state directory, which a restarted sensor enforces before it reads anything.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

from stockade.sensor.ecs import Applied, Host, document
from stockade.sensor.inputs import InputError, Limits, Reading, decode_applied
from stockade.sensor.kernel import Bundle, KillSensor
from stockade.sensor.libbpf import BpfError
from stockade.sensor.output import Output
from stockade.sensor.processes import ProcessCache
from stockade.sensor.records import CgroupRecord, decode
from stockade.sensor.state import StateDir

__all__ = ["Standalone"]

KEEP_GENERATIONS = 16  # far more than can be in the ring buffer at once (0.2 s grace per flip)
BUSY_POLL_MS = 20  # the loop's poll timeout while a reload is on its way
DRAIN_RECORDS = 1 << 15  # more than the 4 MiB ring buffer holds (records are >= 232 bytes)
POLL_RECORDS = 2048  # records written per poll at most: reloads, stats and SIGTERM get a turn

Signature = tuple[int, int, int] | None


def _signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Standalone:
    """Applies the input files to a loaded sensor and writes one document per record."""

    def __init__(
        self,
        sensor: KillSensor,
        policy: Path,
        containers: Path,
        output: Output,
        mode: str,
        *,
        state: StateDir,
        limits: Limits | None = None,
        log: TextIO = sys.stderr,
    ) -> None:
        self.sensor = sensor
        self.policy = policy
        self.containers = containers
        self.output = output
        self.mode = mode
        self.state = state
        self.limits = limits or Limits()
        self.log = log
        self.host = Host.detect()
        self.processes = ProcessCache()
        self.applied: OrderedDict[int, Applied] = OrderedDict()
        self.generation = 0  # the generation in force (0: none yet)
        self.counts: Counter[str] = Counter()
        self._applied_sig: tuple[Signature, Signature] | None = None
        self._seen_sig: tuple[Signature, Signature] | None = None
        self._reading: Reading | None = None
        self._writing: Future[tuple[Applied, int] | None] | None = None
        self._read_s = 0.0
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="stockade-reload")
        self._ring = sensor.ring(self._on_record)

    def _say(self, message: str) -> None:
        print(f"stockade sensor: {message}", file=self.log, flush=True)

    def _refuse(self, reason: str, then: str | None = None) -> None:
        self.counts["refused"] += 1
        kept = f"generation {self.generation}" if self.generation else "no policy"
        self._say(f"refused: {reason}; {then or kept + ' stays in force'}")

    # -- inputs -----------------------------------------------------------------

    def _signatures(self) -> tuple[Signature, Signature]:
        return (_signature(self.policy), _signature(self.containers))

    @property
    def busy(self) -> bool:
        """A reload is on its way (reading in the child, or writing the inactive slot)."""
        return self._reading is not None or self._writing is not None

    def _prepare(self, applied: Applied) -> int:
        """Write `applied` into the inactive slot as the next generation; returns the slot."""
        containers = {cgid: c.workload for cgid, c in applied.containers.items()}
        return self.sensor.prepare(
            Bundle.from_policy(applied.bundle, containers, self.generation + 1)
        )

    def _activate(self, applied: Applied, slot: int, how: str) -> None:
        """Flip to the prepared slot: its generation is in force from now on."""
        generation = self.generation + 1
        self.applied[generation] = Applied(generation, applied.bundle, applied.containers)
        self.sensor.activate(slot)
        self.generation = generation
        while len(self.applied) > KEEP_GENERATIONS:
            self.applied.popitem(last=False)
        self._say(
            f"applied generation {generation}{how}: bundle {applied.bundle.hash}, "
            f"{len(applied.bundle.policies)} policies, {len(applied.containers)} cgroups"
        )

    def apply_cached(self) -> bool:
        """Enforce the state directory's last applied bundle; False if there is none or it is
        refused (then the inputs are all there is). Meant for before the programs attach."""
        try:
            raw = self.state.cached()
            if raw is None:
                return False
            applied = decode_applied(raw, self.state.applied)
            slot = self._prepare(applied)
        except Exception as exc:  # a forged or damaged cache: whatever breaks, read the inputs
            why = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            self._refuse(f"cached bundle {why}", then="reading the inputs instead")
            return False
        self._activate(applied, slot, " from the cache")
        return True

    def start_reading(self) -> None:
        """Start reading the inputs in a child process (`advance` takes it from there)."""
        self._applied_sig = self._seen_sig = self._signatures()
        self._reading = Reading(self.policy, self.containers, self.state.pending, self.limits)

    def _write_pending(self) -> tuple[Applied, int] | None:
        """In the worker thread: the child's result into the inactive slot, then the cached
        one (the loop flips to it next: caching it first means an applied generation is
        always cached, and the loop never waits for an fsync); None: it is what is in force
        already."""
        raw = self.state.pending.read_bytes()
        if self.generation and raw == self.state.cached():
            return None
        applied = decode_applied(raw, self.state.pending)
        slot = self._prepare(applied)
        problem = self.state.commit(raw)
        if problem is not None:
            self._say(f"can't keep the bundle for restarts ({problem}); enforcing it all the same")
        return applied, slot

    def advance(self) -> None:
        """Move a reload on: a finished reading to the worker, a written slot into force."""
        if self._reading is not None and self._reading.poll():
            reading, self._reading = self._reading, None
            self._read_s = time.monotonic() - reading.started
            if reading.error is not None:
                self._refuse(reading.error)
            else:
                self._writing = self._worker.submit(self._write_pending)
        if self._writing is None or not self._writing.done():
            return
        writing, self._writing = self._writing, None
        try:
            written = writing.result()
        except (InputError, BpfError, OSError, ValueError) as exc:
            self._refuse(str(exc))
            return
        if written is None:
            self._say(f"inputs unchanged: generation {self.generation} stays in force")
            return
        self._activate(*written, f" (read in {self._read_s:.1f} s)")

    def apply(self) -> bool:
        """Read, compile and load the inputs and wait until that is done; False if refused."""
        refused = self.counts["refused"]
        self.start_reading()
        while self.busy:
            time.sleep(0.01)
            self.advance()
        return self.counts["refused"] == refused

    def check_inputs(self) -> bool:
        """Start a reload when the inputs changed and stayed unchanged since the last check
        (so a file caught in the middle of a write is not read). True if one started."""
        sig = self._signatures()
        settled = sig == self._seen_sig
        self._seen_sig = sig
        if self.busy or not settled or sig == self._applied_sig:
            return False
        self.start_reading()
        return True

    # -- records ----------------------------------------------------------------

    def _on_record(self, raw: bytes) -> None:
        try:
            rec = decode(raw)
        except (ValueError, IndexError):
            self.counts["undecodable"] += 1
            return
        if isinstance(rec, CgroupRecord):  # standalone's containers come from its input file
            self.counts["cgroup_records"] += 1
            return
        applied = self.applied.get(rec.header.generation)
        if applied is None:
            self.counts["unknown_generation"] += 1
        doc = document(rec, applied, self.mode, self.host)
        self.processes.enrich(doc, rec)
        self.output.write(doc)
        self.counts["written"] += 1

    def pump(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for records and write them; returns how many."""
        n = self._ring.poll(timeout_ms, POLL_RECORDS)
        if n:
            self.output.flush()
        return n

    def drain(self) -> None:
        """Write what is in the ring buffer now (at most what it can hold: a flood goes on)."""
        if self._ring.consume(DRAIN_RECORDS):
            self.output.flush()

    def stats(self) -> dict[str, int]:
        """Kernel counters (rb_fail: records lost to a full ring buffer) and ours."""
        kernel = self.sensor.stats()
        return {
            **kernel,
            "written": self.counts["written"],
            "dropped": kernel["rb_fail"] + kernel["inflight_fail"] + self.counts["undecodable"],
            "undecodable": self.counts["undecodable"],
            "unknown_generation": self.counts["unknown_generation"],
            "cgroup_records": self.counts["cgroup_records"],
            "refused_inputs": self.counts["refused"],
            "generation": self.generation,
            **self.output.stats(),
        }

    def report(self) -> None:
        self._say("stats " + json.dumps(self.stats(), sort_keys=True))

    def run(self, stop: Callable[[], bool], check_s: float = 0.25, stats_s: float = 60.0) -> None:
        """Pump records until stop() is true; check the inputs and report stats periodically."""
        next_check = next_stats = time.monotonic()
        next_stats += stats_s
        while not stop():
            self.pump(BUSY_POLL_MS if self.busy else int(check_s * 1000))
            self.advance()
            now = time.monotonic()
            if now >= next_check:
                self.check_inputs()
                next_check = now + check_s
            if now >= next_stats:
                self.report()
                next_stats = now + stats_s
        self.drain()

    def close(self) -> None:
        """Stop a reading, let a slot being written finish, free the ring consumer."""
        if self._reading is not None:
            self._reading.cancel()
        self._worker.shutdown(wait=True)
        self._ring.close()
