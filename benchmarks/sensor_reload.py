"""What a reload and a restart cost enforcement (root; not a test).

    .venv/bin/python benchmarks/sensor_reload.py [--selectors 255] [--values 56] [--quick]

Two measurements of the real `stockade sensor --standalone` process, in a test cgroup where
a C loop opens a file or fork+execs a tiny static binary:

1. **Reload of a large valid policy**: the sensor logs every write-open of a file, which the
   loop opens 5,000 times a second; the policy file is replaced by one with `--selectors`
   more file selectors of `--values` 190-byte paths each (255 x 56: 2.9 MB, near the
   reader's 3 MiB file limit; with the target's, 256 selectors, the most a part may have)
   that still logs the opens. Reported:
   the seconds until the new generation is applied, the records dropped meanwhile (the stats
   line's `dropped`), and the longest time the output file did not grow (the record loop's
   longest stall; sampled every 20 ms).
2. **Restart after kill -9**: the sensor blocks the binary (kill mode: SIGKILL); it is killed
   with SIGKILL and started again at once. Reported: the execs that ran to completion from
   the restart on, and the time from the restart to the last of them (the gap); once with a
   policy of that one selector, once with the large policy of 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _figures import Figure, add_arguments, figure, report
from _standalone import Sensor

REPO = Path(__file__).resolve().parents[1]
CGROUP2 = Path("/sys/fs/cgroup/unified")
if not (CGROUP2 / "cgroup.procs").exists():
    CGROUP2 = Path("/sys/fs/cgroup")

# until argv[1] seconds passed: open argv[3] for writing argv[4] times a second (argv[2]
# "open"), or fork+exec+wait it ("exec") with one line per exec: CLOCK_MONOTONIC ns at its end
# and its status (0: ran, 9: killed)
LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static long long now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(int argc, char **argv) {
    long long end = now() + (long long)(atof(argv[1]) * 1e9);
    char *args[] = {argv[3], NULL};
    if (!strcmp(argv[2], "open")) {
        long per_10ms = atol(argv[4]) / 100;
        for (long long t = now(); t < end; t += 10000000LL) {
            for (long i = 0; i < per_10ms; i++) close(open(argv[3], O_WRONLY));
            long long left = t + 10000000LL - now();
            if (left > 0) usleep(left / 1000);
        }
        return 0;
    }
    while (now() < end) {
        pid_t p = fork();
        if (!p) { execv(argv[3], args); _exit(127); }
        int st; waitpid(p, &st, 0);
        printf("%lld %d\n", now(), WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        fflush(stdout);
    }
    return 0;
}
"""
OPENS_PER_S = 5000  # records a second while a large policy is reloaded: far below what the
# sensor writes (so nothing is dropped in the steady state), enough to fill the ring buffer
# (4 MiB) in ~3 s of a stalled record loop
TINY_C = 'void _start(void){__asm__ volatile("mov $60,%eax\\n xor %edi,%edi\\n syscall");}\n'


def policy(
    binary: Path, actions: list[str], target: Path, selectors: int = 0, values: int = 0
) -> str:
    """`actions` on execs of `binary`; every write-open of `target` logged; `selectors` more
    file selectors of `values` 190-byte paths each."""
    many = [
        {"name": f"f{i}", "operation": ["createFile", "modifyFile"],
         "targetFilePath": [f"/var/lib/data-{i:03d}/{'d' * 160}/file-{j:03d}/**"
                            for j in range(values)]}
        for i in range(selectors)
    ]  # fmt: skip
    doc = {
        "process": {
            "selectors": [{"name": "tiny", "operation": ["exec"],
                           "processExecutable": [str(binary)]}],
            "responses": [{"match": ["tiny"], "actions": actions}],
        },
        "file": {
            "selectors": [{"name": "target", "operation": ["modifyFile"],
                           "targetFilePath": [str(target)]}, *many],
            "responses": [{"match": ["target"], "actions": ["log"]}],
        },
    }  # fmt: skip
    return json.dumps(doc, indent=1)  # JSON is YAML; indented as a person would write it


def stop(sensor: Sensor) -> dict[str, int]:
    """Stop the sensor; the counters of its last stats line (written as it stops)."""
    sensor.stop()
    time.sleep(0.1)  # the stderr reader's last lines
    stats = [line for _, line in sensor.lines if " stats " in line][-1]
    result: dict[str, int] = json.loads(stats.split(" stats ", 1)[1])
    return result


def start_loop(
    loop: Path, seconds: float, what: str, target: Path, cgroup: Path, stdout: Path | None = None
) -> subprocess.Popen[bytes]:
    def join() -> None:
        (cgroup / "cgroup.procs").write_text("0")

    with open(stdout or os.devnull, "wb") as out:
        argv = [str(loop), str(seconds), what, str(target), str(OPENS_PER_S)]
        return subprocess.Popen(argv, preexec_fn=join, stdout=out)


def reload_large(
    d: Path, cgroup: Path, loop: Path, binary: Path, args: argparse.Namespace
) -> list[Figure]:
    target = d / "target"
    target.write_text("")
    (d / "policy.yaml").write_text(policy(binary, ["log"], target))
    sensor = Sensor(d, f"jsonl:{d / 'out.jsonl'}", stats_s=3600, state=d / "state-reload")
    sensor.wait_for("applied generation 1")
    big = policy(binary, ["log"], target, args.selectors, args.values)
    runner = start_loop(loop, 3600, "open", target, cgroup)
    try:
        time.sleep(1)
        out = d / "out.jsonl"
        samples: list[tuple[float, int]] = []
        (d / "policy.yaml.new").write_text(big)
        os.replace(d / "policy.yaml.new", d / "policy.yaml")
        written = time.monotonic()
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append((time.monotonic(), out.stat().st_size))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        applied = sensor.wait_for(r"applied generation 2|refused")
        time.sleep(1)
        done.set()
        sampler.join()
    finally:
        runner.kill()
        runner.wait()
    stats = stop(sensor)
    stall, last_growth = 0.0, samples[0][0]
    for (_, size0), (t1, size1) in itertools.pairwise(samples):
        if size1 != size0:
            stall = max(stall, t1 - last_growth)
            last_growth = t1
    outcome = next(line for _, line in sensor.lines if re.search(r"generation 2|refused", line))
    print(f"large reload ({len(big) / 1e6:.1f} MB, {args.selectors}x{args.values}): "
          f"{outcome.removeprefix('stockade sensor: ')[:40]}... after "
          f"{applied - written:.1f} s; dropped {stats['dropped']} (rb_fail {stats['rb_fail']}), "
          f"written {stats['written']}; longest stall of the output {stall:.2f} s")  # fmt: skip
    what = f"large reload ({len(big) / 1e6:.1f} MB, {args.selectors}x{args.values})"
    return [
        figure(f"{what}: until applied", applied - written, "s"),
        figure(f"{what}: records dropped meanwhile", stats["dropped"], "records", "<= 0"),
        figure(f"{what}: longest stall of the output", stall, "s"),
    ]


def restart_gap(d: Path, cgroup: Path, loop: Path, binary: Path, size: str) -> list[Figure]:
    """kill -9 and restart a sensor enforcing `size` ("small": the binary's selector only,
    else SELECTORSxVALUES more file selectors, as for the reload)."""
    many = (0, 0) if size == "small" else tuple(int(n) for n in size.split("x"))
    (d / "policy.yaml").write_text(policy(binary, ["alert", "block"], d / "target", *many))
    state = d / f"state-restart-{size}"
    first = Sensor(d, f"jsonl:{d / 'out.jsonl'}", stats_s=3600, state=state)
    first.wait_for("applied generation 1")
    runner = start_loop(loop, 3600, "exec", binary, cgroup, stdout=d / "execs")
    time.sleep(1)
    first.proc.kill()  # kill -9
    first.proc.wait()
    second = Sensor(d, f"jsonl:{d / 'out.jsonl'}", stats_s=3600, state=state)
    second.wait_for("applied generation 1")
    time.sleep(1)
    runner.kill()
    runner.wait()
    out = (d / "execs").read_text()
    ran = [int(t) / 1e9 for t, status in (line.split() for line in out.splitlines())
           if status == "0" and int(t) / 1e9 >= second.started]  # fmt: skip
    gap = (max(ran) - second.started) if ran else 0.0
    second.stop()
    print(f"restart after kill -9 ({size} policy): {len(ran)} blocked execs ran, the last "
          f"{gap:.2f} s after the restart; the sensor said: "
          + "; ".join(f"{at - second.started:.2f} s {line.removeprefix('stockade sensor: ')[:45]}"
                      for at, line in second.lines[:3]))  # fmt: skip
    return [
        figure(f"restart after kill -9 ({size} policy): blocked execs that ran", len(ran), "execs"),
        figure(f"restart after kill -9 ({size} policy): restart to the last of them", gap, "s"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--selectors", type=int, help="default 255 (256 with the target's: the most)")
    ap.add_argument("--values", type=int, help="default 56: just under the 3 MiB limit")
    add_arguments(ap)
    args = ap.parse_args()
    args.selectors = args.selectors or (16 if args.quick else 255)
    args.values = args.values or (4 if args.quick else 56)
    subprocess.run([str(REPO / "bpf" / "build")], check=True, capture_output=True)
    d = Path(tempfile.mkdtemp(prefix="stk-bench-", dir="/var/tmp"))
    cgroup = Path(tempfile.mkdtemp(prefix="stk-bench-", dir=CGROUP2))
    try:
        (d / "loop.c").write_text(LOOP_C)
        (d / "tiny.c").write_text(TINY_C)
        loop, binary = d / "loop", d / "tiny"
        subprocess.run(["gcc", "-O2", "-o", str(loop), str(d / "loop.c")], check=True)
        subprocess.run(["gcc", "-static", "-nostdlib", "-O2", "-o", str(binary),
                        str(d / "tiny.c")], check=True)  # fmt: skip
        (d / "containers.json").write_text(
            json.dumps({str(cgroup): {"kubernetes": {"namespace": "b"}}})
        )
        figures = reload_large(d, cgroup, loop, binary, args)
        figures += restart_gap(d, cgroup, loop, binary, "small")
        figures += restart_gap(d, cgroup, loop, binary, f"{args.selectors}x{args.values}")
        report(args, figures)
    finally:
        cgroup.rmdir()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
