"""What the sensor costs the node: memory, CPU, kernel memory, start-up (root; not a test).

    .venv/bin/python benchmarks/footprint.py [--rounds 3] [--seconds 10] [--quick]

The real `stockade sensor --standalone` (jsonl output to /dev/null), one test cgroup under
/sys/fs/cgroup/unified listed as a container, in each round:

1. idle: the shipped default policy (examples/policies/default.yaml), nothing running in
   the container, `--seconds` after start-up: its RSS (VmRSS) and CPU (user + system, all
   threads) in % of one core (targets <= 100 MiB, <= 1 %);
2. under the log-everything load: a policy logging every fork, exec and file operation in
   the container, where a C loop fork+execs a tiny static binary and write-opens a file
   four times per exec, for `--seconds`: peak RSS (VmHWM) and CPU;
3. the kernel memory of its BPF maps with bundles of 1 (the least a policy has), 64 and 1024
   file and as many process selectors, matching nothing: the `memlock` of every map the
   process holds, from /proc/PID/fdinfo (the figure `bpftool map` shows), both bundle slots
   and the ring buffers included (target <= 64 MiB at 1024);
4. start-up: from the process's start to its first bundle enforced ("applied generation
   1"), cold (no cached bundle), with the default policy and with 1024 selectors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _figures import Figure, add_arguments, figure, report
from _standalone import REPO, Sensor, compile_c, compile_tiny, run_in, test_cgroup

MiB = 1 << 20
# argv: SECONDS EXE FILE: fork+exec+wait EXE and write-open FILE 4 times, for SECONDS;
# prints how many execs it made
LOAD_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    time_t end = time(NULL) + atoi(argv[1]);
    char *args[] = {argv[2], NULL};
    long n = 0;
    for (; time(NULL) < end; n++) {
        pid_t p = fork();
        if (!p) { execv(argv[2], args); _exit(127); }
        waitpid(p, NULL, 0);
        for (int i = 0; i < 4; i++) close(open(argv[3], O_WRONLY));
    }
    printf("%ld\n", n);
    return 0;
}
"""
LOG_EVERYTHING = {
    "process": {"selectors": [{"name": "all", "operation": ["fork", "exec"]}],
                "responses": [{"match": ["all"], "actions": ["log"]}]},
    "file": {"selectors": [{"name": "all", "operation": ["createFile", "modifyFile",
                                                         "deleteFile"]}],
             "responses": [{"match": ["all"], "actions": ["log"]}]},
}  # fmt: skip


def wide(selectors: int) -> str:
    """`selectors` file and as many process selectors, matching nothing, in policies of at
    most 256 per part (the most a part may have)."""
    docs = []
    for p in range(0, selectors, 256):
        spec: dict[str, object] = {}
        for part, key, ops in (("file", "targetFilePath", ["createFile", "modifyFile"]),
                               ("process", "processExecutable", ["exec"])):  # fmt: skip
            names = [f"{part[0]}{i}" for i in range(p, min(p + 256, selectors))]
            spec[part] = {
                "selectors": [{"name": n, "operation": ops, key: [f"/nonexistent/{n}/**"]}
                              for n in names],
                "responses": [{"match": names, "actions": ["alert"]}],
            }  # fmt: skip
        docs.append(
            {
                "apiVersion": "stockade.dev/v1alpha1",
                "kind": "ContainerPolicy",
                "metadata": {"name": f"wide-{p}", "namespace": "bench"},
                "spec": spec,
            }
        )
    return "\n---\n".join(json.dumps(d) for d in docs)  # fmt: skip


def map_memlock(pid: int) -> int:
    """Bytes of kernel memory charged to the BPF maps process `pid` holds (each map once)."""
    seen: dict[str, int] = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-map":
                continue
            lines = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().splitlines()
        except OSError:  # closed meanwhile
            continue
        info = dict(line.split(":", 1) for line in lines)
        seen[info["map_id"].strip()] = int(info["memlock"])
    return sum(seen.values())


def start(d: Path, policy: str) -> tuple[Sensor, float]:
    """A sensor enforcing `policy`; the seconds from its start to the first bundle applied."""
    (d / "policy.yaml").write_text(policy)
    sensor = Sensor(d, "jsonl:/dev/null", stats_s=3600)
    return sensor, sensor.wait_for("applied generation 1") - sensor.started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, help="default 3 (--quick 1)")
    ap.add_argument("--seconds", type=int, help="idle and load time; default 10 (--quick 1)")
    add_arguments(ap)
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (1 if args.quick else 10)
    d = Path(tempfile.mkdtemp(prefix="stk-bench-", dir="/var/tmp"))
    rows: dict[str, list[float]] = {}
    notes: dict[str, str] = {}

    def add(name: str, value: float, note: str = "") -> None:
        rows.setdefault(name, []).append(value)
        if note:
            notes[name] = note

    default = (REPO / "examples" / "policies" / "default.yaml").read_text()
    try:
        load, tiny = compile_c(d, "load", LOAD_C), compile_tiny(d)
        target = d / "target"
        target.write_text("")
        with test_cgroup() as cgroup:
            (d / "containers.json").write_text(
                json.dumps({str(cgroup): {"kubernetes": {"namespace": "bench"}}})
            )
            for r in range(rounds):
                print(f"round {r + 1}", flush=True)
                sensor, startup = start(d, default)
                try:
                    add("start-up to the first bundle enforced, default policy", startup)
                    time.sleep(1)  # the start-up's work done
                    cpu0, t0 = sensor.cpu_seconds(), time.monotonic()
                    time.sleep(seconds)
                    cpu = (sensor.cpu_seconds() - cpu0) / (time.monotonic() - t0)
                    add("idle: RSS", sensor.memory_mib("VmRSS"))
                    add("idle: CPU", 100 * cpu, f"over {seconds} s, default policy")
                finally:
                    sensor.stop()

                sensor, _ = start(d, json.dumps(LOG_EVERYTHING))
                try:
                    cpu0, t0 = sensor.cpu_seconds(), time.monotonic()
                    execs = int(run_in(cgroup, [str(load), str(seconds), str(tiny), str(target)]))
                    cpu = (sensor.cpu_seconds() - cpu0) / (time.monotonic() - t0)
                    hwm = sensor.memory_mib("VmHWM")
                finally:
                    sensor.stop()
                load_note = f"{execs / seconds:,.0f} execs/s and 4 opens each, all logged"
                add("log-everything load: peak RSS (VmHWM)", hwm, load_note)
                add("log-everything load: CPU", 100 * cpu, load_note)

                for n in (1, 64, 1024):  # 1: a policy has one selector at least
                    sensor, startup = start(d, wide(n))
                    try:
                        add(f"BPF maps' kernel memory, {n} selector{'s' * (n > 1)} per part",
                            map_memlock(sensor.proc.pid) / MiB)  # fmt: skip
                        if n == 1024:
                            add("start-up to the first bundle enforced, 1024 selectors per part",
                                startup)  # fmt: skip
                    finally:
                        sensor.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    targets = {"idle: RSS": "<= 100", "idle: CPU": "<= 1",
               "BPF maps' kernel memory, 1024 selectors per part": "<= 64"}  # fmt: skip
    units = {"RSS": "MiB", "CPU": "% of a core", "memory": "MiB", "start-up": "s"}
    figures: list[Figure] = [
        figure(
            name,
            values,
            next(u for k, u in units.items() if k in name),
            targets.get(name),
            notes.get(name),
        )
        for name, values in rows.items()
    ]
    report(args, figures)


if __name__ == "__main__":
    main()
