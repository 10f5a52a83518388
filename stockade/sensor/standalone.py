"""Standalone mode: a policy file and a containers file in, documents out, hot reload.

For hosts without Kubernetes and as the harness the kernel tests drive. Each applied
(policy, containers) pair becomes one kernel generation written through the slot flip
(`KillSensor.reload`): a refused input changes nothing, so the previous generation stays
in force. Records name their generation; the last few applied generations are kept to
name what a record's selector bits meant when it was decided.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from stockade.policy.compiler import CompileError, compile_bundle
from stockade.policy.loader import SourceError, iter_policies
from stockade.sensor.containers import ContainersError, load_containers, namespace_labels
from stockade.sensor.ecs import Applied, Host, document
from stockade.sensor.kernel import Bundle, KillSensor
from stockade.sensor.libbpf import BpfError
from stockade.sensor.output import Output
from stockade.sensor.processes import ProcessCache
from stockade.sensor.records import decode

__all__ = ["InputError", "Standalone", "read_inputs"]

KEEP_GENERATIONS = 16  # far more than can be in the ring buffer at once (0.2 s grace per flip)

Signature = tuple[int, int, int] | None


class InputError(Exception):
    """A policy or containers file that is refused; the message names the file."""


def read_inputs(policy: Path, containers: Path) -> Applied:
    """Compile the policy file for the listed containers (generation 0: not applied yet)."""
    try:
        listed = load_containers(containers)
        documents = list(iter_policies([policy]))
        if not documents:
            raise InputError(f"{policy}: no ContainerPolicy, ClusterContainerPolicy or policy")
        bundle = compile_bundle(documents, namespace_labels=namespace_labels(listed))
    except (ContainersError, SourceError) as exc:
        raise InputError(str(exc)) from None
    except CompileError as exc:
        raise InputError(f"{policy}: can't compile: {exc}") from None
    return Applied(0, bundle, listed)


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
        log: TextIO = sys.stderr,
    ) -> None:
        self.sensor = sensor
        self.policy = policy
        self.containers = containers
        self.output = output
        self.mode = mode
        self.log = log
        self.host = Host.detect()
        self.processes = ProcessCache()
        self.applied: OrderedDict[int, Applied] = OrderedDict()
        self.generation = 0  # the generation in force (0: none yet)
        self.counts: Counter[str] = Counter()
        self._applied_sig: tuple[Signature, Signature] | None = None
        self._seen_sig: tuple[Signature, Signature] | None = None
        self._ring = sensor.ring(self._on_record)

    def _say(self, message: str) -> None:
        print(f"stockade sensor: {message}", file=self.log, flush=True)

    # -- inputs -----------------------------------------------------------------

    def _signatures(self) -> tuple[Signature, Signature]:
        return (_signature(self.policy), _signature(self.containers))

    def apply(self) -> bool:
        """Read, compile and load the inputs as the next generation; False if refused."""
        sig = self._signatures()
        self._applied_sig = self._seen_sig = sig
        try:
            inputs = read_inputs(self.policy, self.containers)
            generation = self.generation + 1
            self.sensor.reload(
                Bundle.from_policy(
                    inputs.bundle,
                    {cgid: c.workload for cgid, c in inputs.containers.items()},
                    generation,
                )
            )
        except (InputError, BpfError, ValueError) as exc:
            self.counts["refused"] += 1
            kept = f"generation {self.generation}" if self.generation else "no policy"
            self._say(f"refused: {exc}; {kept} stays in force")
            return False
        self.generation = generation
        self.applied[generation] = Applied(generation, inputs.bundle, inputs.containers)
        while len(self.applied) > KEEP_GENERATIONS:
            self.applied.popitem(last=False)
        self._say(
            f"applied generation {generation}: bundle {inputs.bundle['hash']}, "
            f"{len(inputs.bundle['policies'])} policies, {len(inputs.containers)} cgroups"
        )
        return True

    def check_inputs(self) -> bool:
        """Apply the inputs when they changed and stayed unchanged since the last check
        (so a file caught in the middle of a write is not read). True if applied."""
        sig = self._signatures()
        settled = sig == self._seen_sig
        self._seen_sig = sig
        return settled and sig != self._applied_sig and self.apply()

    # -- records ----------------------------------------------------------------

    def _on_record(self, raw: bytes) -> None:
        try:
            rec = decode(raw)
        except (ValueError, IndexError):
            self.counts["undecodable"] += 1
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
        n = self._ring.poll(timeout_ms)
        if n:
            self.output.flush()
        return n

    def drain(self) -> None:
        """Write whatever is in the ring buffer now."""
        if self._ring.consume():
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
            self.pump(int(check_s * 1000))
            now = time.monotonic()
            if now >= next_check:
                self.check_inputs()
                next_check = now + check_s
            if now >= next_stats:
                self.report()
                next_stats = now + stats_s
        self.drain()

    def close(self) -> None:
        self._ring.close()
