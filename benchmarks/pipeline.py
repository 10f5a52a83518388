"""The sensor's event pipeline on a real kernel: records/s from the ring buffer to written
documents, on one core (root; not a test).

    .venv/bin/python benchmarks/pipeline.py [--seconds 4] [--rounds 2] [--quick]

The real `stockade sensor --standalone` runs pinned to CPU 1 (`taskset`), under a policy
that alerts on every write-open of one file; a C loop pinned to CPU 0, in a test cgroup
under /sys/fs/cgroup/unified, opens that file at a set rate for `--seconds`. Falco's method:
the rate starts at 6,250/s and doubles until records are lost (the kernel's `rb_fail`: the
ring buffer was full) or the loop can't open faster; then the offered rate is bisected
between the highest step that lost nothing and the lowest that lost some, until they are
within 5 % of each other (--quick: 50 %). The zero-loss figure is the highest offered rate
that lost nothing, below every rate that lost some. At each step: the rate the loop
reached, the documents written per second until the sensor caught up, the loss rate, and
the sensor's CPU (user + system, all threads, over the same time) in % of one core.

Twice: with `jsonl:/dev/null` (the null sink: documents serialized, then discarded), and
with `elasticsearch:$ELASTICSEARCH_URL` (services/up), where the output's queue and spool
stand between the reader and Elasticsearch, and the sweep (the same doubling and bisection)
goes on doubling past the first loss, as long as the loop reaches the rate: alerts the
output dropped at any step (`es_dropped_alerts`) and the sustained indexing rate (documents
delivered / time from the first step until Elasticsearch acknowledged the last) are
reported. The data streams of the run's namespace are deleted afterwards.

Target: >= 50,000 records/s with zero loss on one core; with Elasticsearch no alert lost by
the output at any rate. The user-space part alone, without the kernel: es_output.py enrich.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _figures import Figure, add_arguments, figure, report
from _standalone import Sensor, compile_c, run_in, test_cgroup

SENSOR_CPU, LOAD_CPU = 1, 0
# argv: RATE SECONDS PATH. Opens PATH for writing RATE times a second (as fast as it can
# when that is more) for SECONDS; prints how many opens it made and the seconds they took.
LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    double rate = atof(argv[1]), seconds = atof(argv[2]), start = now(), t = start;
    long done = 0;
    while ((t = now()) - start < seconds) {
        long due = (long)((t - start) * rate);
        if (done >= due) { usleep(100); continue; }
        for (int i = 0; i < 64 && done < due; i++, done++) close(open(argv[3], O_WRONLY));
    }
    printf("%ld %f\n", done, now() - start);
    return 0;
}
"""


@dataclass
class Step:
    offered: int  # records/s asked of the loop
    made: int  # records the loop made (one per open)
    made_s: float
    written: int
    lost: int  # the kernel's rb_fail
    seconds: float  # from the loop's start until the sensor had written or lost them all
    cpu: float  # the sensor's, seconds
    waited: float  # seconds the sensor's threads were ready but had no CPU
    output_dropped_alerts: int = 0

    @property
    def loss(self) -> float:
        return self.lost / self.made if self.made else 0.0

    @property
    def rate(self) -> float:
        """Records/s the loop made."""
        return self.made / self.made_s

    @property
    def reached(self) -> bool:
        """Whether the loop made (nearly) the rate offered."""
        return self.rate >= 0.9 * self.offered


def policy(target: Path) -> str:
    return json.dumps({
        "file": {
            "selectors": [{"name": "target", "operation": ["modifyFile"],
                           "targetFilePath": [str(target)]}],
            "responses": [{"match": ["target"], "actions": ["alert"]}],
        }
    }, indent=1)  # fmt: skip


def sweep(sensor: Sensor, loop: Path, target: Path, cgroup: Path, rates: list[int],
          seconds: float, resolution: float, past_loss: bool = False) -> list[Step]:  # fmt: skip
    """The steps, in the order run: each rate of `rates` until one loses records or the loop
    can't reach it; then, bisecting, the rate halfway between the highest that lost nothing
    and the lowest that lost some, until those are within `resolution` (a fraction) of each
    other; with `past_loss`, the rest of `rates` after that, as long as the loop reaches them."""
    steps: list[Step] = []
    at, before = sensor.stats()

    def run(rate: int) -> Step:
        nonlocal at, before
        cpu0, wait0, t0 = sensor.cpu_seconds(), sensor.waiting_seconds(), time.monotonic()
        out = run_in(cgroup, [str(loop), str(rate), str(seconds), str(target)], LOAD_CPU)
        made, made_s = int(out.split()[0]), float(out.split()[1])
        after = before
        settle = time.monotonic() + 30
        while time.monotonic() < settle:  # until every record is written or lost
            at, after = sensor.stats(after=at)
            handled = after["written"] - before["written"] + after["rb_fail"] - before["rb_fail"]
            if handled >= made:
                break
        step = Step(
            offered=rate, made=made, made_s=made_s, written=after["written"] - before["written"],
            lost=after["rb_fail"] - before["rb_fail"], seconds=at - t0,
            cpu=sensor.cpu_seconds() - cpu0, waited=sensor.waiting_seconds() - wait0,
            output_dropped_alerts=after.get("es_dropped_alerts", 0)
            - before.get("es_dropped_alerts", 0),
        )  # fmt: skip
        steps.append(step)
        print(f"  {rate:>8,}/s offered: {step.rate:>8,.0f}/s made, "
              f"{step.written / step.seconds:>8,.0f}/s written, loss {step.loss:.2%}, "
              f"sensor CPU {step.cpu / step.seconds:.0%} (waited for it "
              f"{step.waited / step.seconds:.0%}), output dropped alerts "
              f"{step.output_dropped_alerts}", flush=True)  # fmt: skip
        before = after
        return step

    rest = iter(rates)
    for rate in rest:  # doubling
        step = run(rate)
        if step.lost:
            break
        if not step.reached:
            return steps  # nothing lost up to the loop's limit
    else:
        return steps
    lossless = [s.offered for s in steps if not s.lost]
    low, high = max(lossless, default=0), step.offered
    while lossless and high - low > resolution * low:  # bisecting
        step = run((low + high) // 2)
        low, high = (low, step.offered) if step.lost else (step.offered, high)
    if past_loss:
        for rate in rest:
            if not run(rate).reached:
                break
    return steps


def zero_loss(steps: list[Step]) -> Step | None:
    """The step at the highest rate offered that lost nothing, below every rate that lost
    some (None: the first lost some)."""
    first_loss = min((s.offered for s in steps if s.lost), default=float("inf"))
    return max((s for s in steps if not s.lost and s.offered < first_loss),
               key=lambda s: s.offered, default=None)  # fmt: skip


def zero_loss_rate(step: Step | None) -> float:
    """The offered rate of a step the loop reached; the loop's rate (its limit) otherwise."""
    if step is None:
        return 0.0
    return step.offered if step.reached else step.rate


def zero_loss_note(steps: list[Step]) -> str:
    """What the zero-loss figure stands on: the loop's rate, the sensor's CPU there, and the
    lowest rate that lost records."""
    best = zero_loss(steps)
    lossy = min((s for s in steps if s.lost), key=lambda s: s.offered, default=None)
    out = "none without loss" if best is None else (
        f"{best.offered:,}/s offered: the loop made {best.rate:,.0f}/s, sensor CPU "
        f"{best.cpu / best.seconds:.0%} of a core")  # fmt: skip
    if lossy is None:
        return out + "; no step lost records: the loop's limit"
    return out + f"; {lossy.offered:,}/s offered lost {lossy.loss:.1%}"


def step_figures(sink: str, steps: list[Step]) -> list[Figure]:
    return [
        figure(f"{sink}: loss at {s.offered:,}/s offered", 100 * s.loss, "%",
               note=f"{s.rate:,.0f}/s made, {s.written / s.seconds:,.0f}/s written, "
               f"sensor CPU {s.cpu / s.seconds:.0%} of a core (waited for one "
               f"{s.waited / s.seconds:.0%} of the time), "
               f"{s.written / max(s.cpu, 0.01):,.0f} written per CPU second")
        for s in sorted(steps, key=lambda s: s.offered)
    ]  # fmt: skip


def per_cpu_second(steps: list[Step]) -> float:
    """Documents written per second of the sensor's CPU, over the steps: its rate on a core
    of its own, whatever share of CPU 1 the machine's other work left it."""
    return sum(s.written for s in steps) / max(sum(s.cpu for s in steps), 0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, help="per step; default 4 (--quick 1)")
    ap.add_argument("--rounds", type=int, help="sweeps with the null sink; default 2 (--quick 1)")
    add_arguments(ap)
    args = ap.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    rounds = args.rounds or (1 if args.quick else 2)
    rates = [25_000, 50_000] if args.quick else [6_250 * 2**i for i in range(8)]  # to 800,000
    resolution = 0.5 if args.quick else 0.05  # of the bisection
    es_url = os.environ["ELASTICSEARCH_URL"]
    namespace = f"bench{os.getpid()}"
    d = Path(tempfile.mkdtemp(prefix="stk-bench-", dir="/var/tmp"))
    figures: list[Figure] = []
    try:
        loop = compile_c(d, "loop", LOOP_C)
        target = d / "target"
        target.write_text("")
        (d / "policy.yaml").write_text(policy(target))
        with test_cgroup() as cgroup:
            (d / "containers.json").write_text(
                json.dumps({str(cgroup): {"kubernetes": {"namespace": "bench"}}})
            )
            best: list[float] = []
            notes: list[str] = []
            capacity: list[float] = []
            for r in range(rounds):
                print(f"null sink (jsonl:/dev/null), round {r + 1}:", flush=True)
                sensor = Sensor(d, "jsonl:/dev/null", SENSOR_CPU)
                try:
                    sensor.wait_for("applied generation 1")
                    steps = sweep(sensor, loop, target, cgroup, rates, seconds, resolution)
                finally:
                    sensor.stop()
                best.append(zero_loss_rate(zero_loss(steps)))
                notes.append(f"round {r + 1}: {zero_loss_note(steps)}")
                capacity.append(per_cpu_second(steps))
                if r == rounds - 1:
                    figures += step_figures("null sink", steps)
            figures.insert(0, figure(
                "null sink: highest rate with zero loss, sensor on one core", best, "records/s",
                ">= 50000", note=f"offered, bisected to {resolution:.0%}; " + " — ".join(notes),
            ))  # fmt: skip
            figures.insert(1, figure(
                "null sink: documents written per second of sensor CPU", capacity, "records/s",
                ">= 50000", note="the rate on a core of its own, whatever the load left it",
            ))  # fmt: skip

            print("elasticsearch:", flush=True)
            sensor = Sensor(d, f"elasticsearch:{es_url}", SENSOR_CPU, extra=(
                "--es-namespace", namespace, "--spool-dir", str(d / "spool")))  # fmt: skip
            try:
                sensor.wait_for("applied generation 1")
                t0 = time.monotonic()
                # on past the ring buffer's first loss: the output's queue is only tested when
                # the reader outpaces Elasticsearch
                steps = sweep(sensor, loop, target, cgroup, rates, seconds, resolution,
                              past_loss=True)  # fmt: skip
                written = sum(s.written for s in steps)
                deadline = time.monotonic() + (30 if args.quick else 300)
                at, stats = sensor.stats()
                final = ("es_delivered", "es_dead_letter", "es_dropped_alerts", "es_dropped_logs")
                while sum(stats[k] for k in final) < written and time.monotonic() < deadline:
                    at, stats = sensor.stats(after=at)
            finally:
                sensor.stop()
            figures += [
                figure("elasticsearch: alerts the output dropped, all steps",
                       sum(s.output_dropped_alerts for s in steps), "alerts", "<= 0",
                       note=f"{written:,} written; {stats['es_spooled']} spooled at the end"),
                figure("elasticsearch: sustained indexing rate",
                       stats["es_delivered"] / (at - t0), "documents/s",
                       note=f"{stats['es_delivered']:,} delivered in {at - t0:.0f} s; "
                       f"{stats['es_failed_requests']} failed requests"),
                figure("elasticsearch: highest rate with zero loss",
                       zero_loss_rate(zero_loss(steps)), "records/s",
                       note=f"offered, bisected to {resolution:.0%}; the ring buffer's loss "
                       f"(the reader too slow): {zero_loss_note(steps)}"),
                *step_figures("elasticsearch", steps),
            ]  # fmt: skip
    finally:
        shutil.rmtree(d, ignore_errors=True)
        delete_streams(namespace)
    report(args, figures)


def delete_streams(namespace: str) -> None:
    from stockade.sensor.elastic.config import ElasticConfig

    client = ElasticConfig(os.environ["ELASTICSEARCH_URL"], namespace).client()
    client.options(ignore_status=404).indices.delete_data_stream(
        name=f"logs-cloud_defend.*-{namespace}"
    )
    client.close()


if __name__ == "__main__":
    main()
