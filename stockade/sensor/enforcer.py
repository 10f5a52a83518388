"""What every sensor mode does with loaded programs: generations in, documents and counts out.

A generation is one bundle written into the inactive slot and flipped into force
(`KillSensor.prepare` + `activate`); records name the generation that decided them, and the
last few are kept to say what a record's selector bits meant. Where the bundle comes from
is the mode's business: files (`standalone.Standalone`) or the node's ConfigMap
(`node.NodeSensor`). Writing a slot happens in a worker thread, so the record loop only
ever flips.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import stat
import struct
import sys
from collections import Counter, OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Final, TextIO

from stockade.policy.bundle import PolicyEntry
from stockade.policy.model import PartName
from stockade.policy.tables import PartTables
from stockade.sensor.abi import ActionBits, RecordKind
from stockade.sensor.containers import Container
from stockade.sensor.ecs import Applied, Host, document
from stockade.sensor.inputs import InputError, decode_applied
from stockade.sensor.kernel import Bundle, KillSensor
from stockade.sensor.output import Output
from stockade.sensor.processes import ProcessCache
from stockade.sensor.records import CgroupRecord, FileRecord, ProcessRecord, decode
from stockade.sensor.state import StateDir

__all__ = ["DROP_REASONS", "Enforcer", "Generation", "Tally", "drops"]

# kill mode's pending records, settled here (Enforcer.settle)
PENDING_COUNTS: Final = ("pending_executable", "pending_not_executable", "pending_unread")
KEEP_GENERATIONS = 16  # far more than can be in the ring buffer at once (0.2 s grace per flip)
DRAIN_RECORDS = 1 << 15  # more than the 4 MiB ring buffer holds (records are >= 232 bytes)
POLL_RECORDS = 2048  # records written per poll at most: reloads, stats and SIGTERM get a turn
# after a poll that caught up, how long log records may gather before the next (cgroup
# records and alerts end the wait at once), instead of a wakeup per record (docs/kernel.md)
GATHER_MS = 5
# the stats counting events that never reached the output's destination: the kernel's ring
# buffer or in-flight table full, records we couldn't decode, the Elasticsearch output's
# queue or spool full (alerts, logs), documents Elasticsearch refused for their content
# (kept in the dead-letter file, not in the index), documents the JSON-lines output
# couldn't write (a full disk)
DROP_REASONS = ("rb_fail", "inflight_fail", "undecodable", "es_dropped_alerts",
                "es_dropped_logs", "es_dead_letter", "output_lost")  # fmt: skip


def drops(stats: Mapping[str, int]) -> dict[str, int]:
    """Events lost since the sensor started, by reason (the `stats` key that counts them)."""
    return {reason: stats[reason] for reason in DROP_REASONS if reason in stats}


_KIND_NAMES: dict[int, str] = {
    RecordKind.PROCESS: "process",
    RecordKind.FILE: "file",
    RecordKind.EXIT: "exit",
}


@dataclass
class Tally:
    """One policy generation's counts since the sensor started."""

    policy: PolicyEntry
    blocked: int = 0
    alerted: int = 0
    logged: int = 0


@dataclass(frozen=True)
class Generation:
    """One generation in force now or earlier: its inputs and the tables the kernel read."""

    applied: Applied
    parts: Mapping[PartName, PartTables]
    cgroups: Mapping[int, Mapping[PartName, int]]  # the slot's cgroups, as written


class Enforcer:
    """Generations of one loaded sensor, and its records written as documents.

    `tallies` are the per-policy counters of the NodePolicyReport: blocked, alerted and
    logged per (policy UID, generation) of the bundle in force, from this sensor's start.
    """

    WITHOUT_CACHE = "starting without it"  # what a refused cached bundle leaves

    def __init__(
        self,
        sensor: KillSensor,
        output: Output,
        mode: str,
        *,
        state: StateDir,
        log: TextIO = sys.stderr,
    ) -> None:
        self.sensor = sensor
        self.output = output
        self.mode = mode
        self.state = state
        self.log = log
        self.host = Host.detect()
        self.processes = ProcessCache()
        self.generations: OrderedDict[int, Generation] = OrderedDict()
        self.generation = 0  # the generation in force (0: none yet)
        self.counts: Counter[str] = Counter()
        self.records: Counter[tuple[str, str]] = Counter()  # (kind, outcome) → documents
        self.tallies: dict[tuple[str, int], Tally] = {}
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="stockade-reload")
        self._ring = sensor.ring(self._on_record)

    def say(self, message: str) -> None:
        print(f"stockade sensor: {message}", file=self.log, flush=True)

    def refuse(self, reason: str, then: str | None = None) -> None:
        self.counts["refused"] += 1
        kept = f"generation {self.generation}" if self.generation else "no policy"
        self.say(f"refused: {reason}; {then or kept + ' stays in force'}")

    @property
    def in_force(self) -> Generation | None:
        return self.generations.get(self.generation)

    # -- generations ------------------------------------------------------------

    def documented_containers(self, applied: Applied) -> Mapping[int, Container]:
        """Where documents find a cgroup's container (the mode may know more than `applied`)."""
        return applied.containers

    def prepare(self, applied: Applied) -> tuple[Generation, int]:
        """Write `applied` into the inactive slot as the next generation; returns it and the
        slot, for `activate`."""
        containers = {cgid: c.workload for cgid, c in applied.containers.items()}
        bundle = Bundle.from_policy(applied.bundle, containers, self.generation + 1)
        slot = self.sensor.prepare(bundle)
        return Generation(applied, bundle.parts, bundle.cgroups), slot

    def activate(self, prepared: Generation, slot: int, how: str) -> None:
        """Flip to the prepared slot: its generation is in force from now on."""
        generation = self.generation + 1
        applied = prepared.applied
        containers = self.documented_containers(applied)
        self.generations[generation] = Generation(
            Applied(generation, applied.bundle, containers), prepared.parts, prepared.cgroups
        )
        self.sensor.activate(slot)
        self.generation = generation
        while len(self.generations) > KEEP_GENERATIONS:
            self.generations.popitem(last=False)
        self._tally_policies(applied)
        self.say(
            f"applied generation {generation}{how}: bundle {applied.bundle.hash}, "
            f"{len(applied.bundle.policies)} policies, {len(applied.containers)} cgroups"
        )

    def apply_cached(self) -> bool:
        """Enforce the state directory's last applied bundle; False if there is none or it is
        refused. Meant for before the programs attach."""
        try:
            raw = self.state.cached()
            if raw is None:
                return False
            applied = self.restored(decode_applied(raw, self.state.applied))
            prepared, slot = self.prepare(applied)
        except Exception as exc:  # a forged or damaged cache: whatever breaks, go on without
            why = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            self.refuse(f"cached bundle {why}", then=self.WITHOUT_CACHE)
            return False
        self.activate(prepared, slot, " from the cache")
        return True

    def restored(self, applied: Applied) -> Applied:
        """What of a cached generation to enforce again (the mode may drop stale cgroups)."""
        return applied

    # -- records ----------------------------------------------------------------

    def on_cgroup(self, rec: CgroupRecord) -> None:
        """A cgroup made or removed (the Kubernetes mode learns containers from them)."""
        self.counts["cgroup_records"] += 1

    def _on_record(self, raw: bytes) -> None:
        try:
            rec = decode(raw)
        except (ValueError, IndexError, struct.error):
            self.counts["undecodable"] += 1
            return
        if isinstance(rec, CgroupRecord):
            self.on_cgroup(rec)
            return
        if isinstance(rec, FileRecord) and rec.header.outcome == "pending":
            settled = self.settle(rec)
            if settled is None:
                return
            rec = settled
        generation = self.generations.get(rec.header.generation)
        if generation is None:
            self.counts["unknown_generation"] += 1
        applied = generation.applied if generation is not None else None
        doc = document(rec, applied, self.mode, self.host)
        self.processes.enrich(doc, rec)
        self.output.write(doc)
        self.counts["written"] += 1
        self.records[_KIND_NAMES.get(rec.header.kind, "other"), rec.header.outcome] += 1
        if generation is not None:
            self._tally(rec, generation)

    def settle(self, rec: FileRecord) -> FileRecord | None:
        """Kill mode's createExecutable of a name given by rename or link (by path): the
        kernel could not read the file's mode there, so it is read here, through the
        process's root — after the fact. Not an executable: no record (None). Executable:
        the record, killed if a block applies. Unreadable (the process, or the file, gone):
        the record as it is, outcome `pending` (docs/kernel.md, "Attacks")."""
        h = rec.header
        try:
            mode = os.stat(f"/proc/{h.tgid}/root{rec.path}").st_mode
        except OSError:
            self.counts["pending_unread"] += 1
            return rec
        if not stat.S_ISREG(mode) or not mode & 0o111:
            self.counts["pending_not_executable"] += 1
            return None
        outcome = "allowed"
        if h.actions & ActionBits.BLOCK:
            try:
                os.kill(h.tgid, signal.SIGKILL)
                outcome = "killed"
            except OSError:
                outcome = "kill_failed"
        self.counts["pending_executable"] += 1
        return replace(rec, header=replace(h, outcome=outcome), mode=mode)

    def _tally_policies(self, applied: Applied) -> None:
        """Counters for the policies of the bundle now in force: those of earlier
        generations that left it are dropped (the report's contract: they don't return)."""
        tallies: dict[tuple[str, int], Tally] = {}
        for p in applied.bundle.policies:
            key = (p.uid, p.generation)
            tallies[key] = self.tallies.get(key) or Tally(p)
        self.tallies = tallies

    def _tally(self, rec: ProcessRecord | FileRecord, generation: Generation) -> None:
        h = rec.header
        if h.kind == RecordKind.EXIT or not h.matched:
            return
        part: PartName = "file" if isinstance(rec, FileRecord) else "process"
        tables = generation.parts.get(part)
        if tables is None:
            return
        policies = generation.applied.bundle.policies
        for index, actions in tables.actions_by_policy(h.matched).items():
            p = policies[index]
            tally = self.tallies.get((p.uid, p.generation))
            if tally is None:  # its generation left the bundle since
                self.counts["late_counts"] += 1
                continue
            if ActionBits.BLOCK in actions and h.outcome != "allowed":
                tally.blocked += 1
            if actions & (ActionBits.ALERT | ActionBits.AUDIT_BLOCK):
                tally.alerted += 1
            if ActionBits.LOG in actions:
                tally.logged += 1

    def pump(self, timeout_ms: int, wake: int | None = None) -> int:
        """Wait up to timeout_ms for records, or for `wake` (a pipe's reading end, emptied
        here) to be readable, and write them; returns how many. Having caught up, let the next
        log records gather for up to GATHER_MS (RingBuffer.gather; `wake` ends it too)."""
        if wake is not None:
            waiter = select.poll()  # not select.select: no limit on the fds' numbers
            waiter.register(self._ring.epoll_fd, select.POLLIN)
            waiter.register(wake, select.POLLIN)
            if any(fd == wake for fd, _ in waiter.poll(timeout_ms)):
                with contextlib.suppress(BlockingIOError):
                    os.read(wake, 4096)
            timeout_ms = 0
        n = self._ring.poll(timeout_ms, POLL_RECORDS)
        if n:
            self.output.flush()
        if 0 < n < POLL_RECORDS:
            self._ring.gather(GATHER_MS, wake)
        return n

    def drain(self) -> None:
        """Write what is in the ring buffer now (at most what it can hold: a flood goes on)."""
        if self._ring.consume(DRAIN_RECORDS):
            self.output.flush()

    def stats(self) -> dict[str, int]:
        """Kernel counters (rb_fail: records lost to a full ring buffer), ours, the output's;
        `dropped` sums `drops`."""
        stats = {
            **self.sensor.stats(),
            "written": self.counts["written"],
            "undecodable": self.counts["undecodable"],
            "unknown_generation": self.counts["unknown_generation"],
            "cgroup_records": self.counts["cgroup_records"],
            "refused_inputs": self.counts["refused"],
            **{k: self.counts[k] for k in PENDING_COUNTS},
            "generation": self.generation,
            **self.output.stats(),
        }
        stats["dropped"] = sum(drops(stats).values())
        return stats

    def report(self) -> None:
        self.say("stats " + json.dumps(self.stats(), sort_keys=True))

    def close(self) -> None:
        """Let a slot being written finish, free the ring consumer."""
        self._worker.shutdown(wait=True)
        self._ring.close()
