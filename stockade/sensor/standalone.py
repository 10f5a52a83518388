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

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TextIO

from stockade.sensor.enforcer import Enforcer, Generation
from stockade.sensor.inputs import InputError, Limits, Reading, decode_applied
from stockade.sensor.kernel import KillSensor
from stockade.sensor.libbpf import BpfError
from stockade.sensor.output import Output
from stockade.sensor.state import StateDir

__all__ = ["Standalone"]

BUSY_POLL_MS = 20  # the loop's poll timeout while a reload is on its way

Signature = tuple[int, int, int] | None


def _signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Standalone(Enforcer):
    """Applies the input files to a loaded sensor and writes one document per record."""

    WITHOUT_CACHE = "reading the inputs instead"

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
        super().__init__(sensor, output, mode, state=state, log=log)
        self.policy = policy
        self.containers = containers
        self.limits = limits or Limits()
        self._applied_sig: tuple[Signature, Signature] | None = None
        self._seen_sig: tuple[Signature, Signature] | None = None
        self._reading: Reading | None = None
        self._writing: Future[tuple[Generation, int] | None] | None = None
        self._read_s = 0.0

    # -- inputs -----------------------------------------------------------------

    def _signatures(self) -> tuple[Signature, Signature]:
        return (_signature(self.policy), _signature(self.containers))

    @property
    def busy(self) -> bool:
        """A reload is on its way (reading in the child, or writing the inactive slot)."""
        return self._reading is not None or self._writing is not None

    def start_reading(self) -> None:
        """Start reading the inputs in a child process (`advance` takes it from there)."""
        self._applied_sig = self._seen_sig = self._signatures()
        self._reading = Reading(self.policy, self.containers, self.state.pending, self.limits)

    def _write_pending(self) -> tuple[Generation, int] | None:
        """In the worker thread: the child's result into the inactive slot, then the cached
        one (the loop flips to it next: caching it first means an applied generation is
        always cached, and the loop never waits for an fsync); None: it is what is in force
        already."""
        raw = self.state.pending.read_bytes()
        if self.generation and raw == self.state.cached():
            return None
        prepared = self.prepare(decode_applied(raw, self.state.pending))
        problem = self.state.commit(raw)
        if problem is not None:
            self.say(f"can't keep the bundle for restarts ({problem}); enforcing it all the same")
        return prepared

    def advance(self) -> None:
        """Move a reload on: a finished reading to the worker, a written slot into force."""
        if self._reading is not None and self._reading.poll():
            reading, self._reading = self._reading, None
            self._read_s = time.monotonic() - reading.started
            if reading.error is not None:
                self.refuse(reading.error)
            else:
                self._writing = self._worker.submit(self._write_pending)
        if self._writing is None or not self._writing.done():
            return
        writing, self._writing = self._writing, None
        try:
            written = writing.result()
        except (InputError, BpfError, OSError, ValueError) as exc:
            self.refuse(str(exc))
            return
        if written is None:
            self.say(f"inputs unchanged: generation {self.generation} stays in force")
            return
        self.activate(*written, f" (read in {self._read_s:.1f} s)")

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
        """Stop a reading, then what every mode stops."""
        if self._reading is not None:
            self._reading.cancel()
        super().close()
