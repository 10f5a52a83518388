"""Sensor overhead, measured side by side in one run (root; not a test).

    .venv/bin/python benchmarks/sensor_overhead.py [--rounds 5] [--vm] [--quick]

Three ratios, each the median over rounds of (time with the sensor) / (time without),
the two measured back to back in every round, all inside one test cgroup:

1. open(O_WRONLY)/close of an existing file, 1024 file and 1024 process selectors whose
   responses match nothing (target <= 1.03x);
2. fork+exec+wait of a tiny static binary, same bundle (target <= 1.05x);
3. the same exec loop under the default policy (every exec logged), the standalone sensor
   reading the ring buffer and writing JSON lines (target <= 1.15x).

Three more rows for the first: the same selectors under /var (the loop's file is in /var/tmp,
so every open is walked and looked up in full: the first-component filter can't help); the
same for a 400-byte path (also looked up among the entries longer than 255 bytes); and
the floor: empty programs attached where the sensor's are (in kill mode every file
syscall's enter and exit tracepoint, which puts every syscall of every task on the
kernel's traced path), what no program body can go below.

The sensor is the real `stockade sensor --standalone` process; "without" is no sensor at all.
The loops are C programs (a Python loop would hide the cost). The sensor probes its mode:
`kill` on this machine's kernel; `--vm` runs the same script in lsm mode inside the BPF LSM
test VM (`e2e/vm/run`, qemu TCG: emulation makes everything 10-30x slower, so the VM's
default counts are smaller and only the ratios compare); `--vm --lsm LIST` without bpf in
LIST, in fmodret mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _figures import Figure, add_arguments, figure, report

from stockade.sensor.kernel import FMODRET_HOOKS, LSM_HOOKS, present_file_syscalls, present_hooks
from stockade.sensor.libbpf import BpfObject
from stockade.sensor.paths import BPF_ARCH
from stockade.sensor.probe import Mode, probe_mode

REPO = Path(__file__).resolve().parents[1]
CGROUP2 = Path("/sys/fs/cgroup/unified")
if not (CGROUP2 / "cgroup.procs").exists():
    CGROUP2 = Path("/sys/fs/cgroup")

LOOPS_C = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    if (!strcmp(argv[1], "open")) {
        for (long i = 0; i < n; i++) close(open(argv[3], O_WRONLY));
    } else {
        char *args[] = {argv[3], NULL};
        for (long i = 0; i < n; i++) {
            pid_t p = fork();
            if (!p) { execv(argv[3], args); _exit(127); }
            waitpid(p, NULL, 0);
        }
    }
    return 0;
}
"""
IN_VM = os.environ.get("STOCKADE_VM") == "1"  # set by e2e/vm/run
# (rounds, opens, execs) by default: on this machine, and in the test VM under TCG
DEFAULTS = (3, 40_000, 500) if IN_VM else (5, 200_000, 3_000)
QUICK = (1, 5_000, 100)

TINY_C = 'void _start(void){__asm__ volatile("mov $60,%eax\\n xor %edi,%edi\\n syscall");}\n'
# empty programs for the floor: one for every tracepoint, one per LSM hook and per security_*
# function (fmodret)
NOOP_C = "\n".join(
    [
        '#include "vmlinux.h"',
        "#include <bpf/bpf_helpers.h>",
        'char LICENSE[] SEC("license") = "GPL";',
        'SEC("tracepoint") int noop_tp(void *ctx) { return 0; }',
        *(
            f'SEC("lsm/{h.point}") int noop_{h.point}(void *ctx) {{ return 0; }}'
            for h in LSM_HOOKS.values()
        ),
        *(
            f'SEC("fmod_ret/{h.point}") int noop_{h.point}(void *ctx) {{ return 0; }}'
            for h in FMODRET_HOOKS.values()
        ),
    ]
)


def build(d: Path) -> tuple[Path, Path, Path]:
    """The loops, the tiny static binary and the empty BPF programs."""
    (d / "loops.c").write_text(LOOPS_C)
    (d / "tiny.c").write_text(TINY_C)
    (d / "noop.bpf.c").write_text(NOOP_C)
    subprocess.run(["gcc", "-O2", "-o", str(d / "loops"), str(d / "loops.c")], check=True)
    subprocess.run(
        ["gcc", "-static", "-nostdlib", "-O2", "-o", str(d / "tiny"), str(d / "tiny.c")],
        check=True,
    )
    subprocess.run(
        ["clang", "-O2", "-target", "bpf", f"-I{REPO / 'bpf' / 'vmlinux' / BPF_ARCH}", "-c",
         str(d / "noop.bpf.c"),
         "-o", str(d / "noop.bpf.o")],
        check=True,
    )  # fmt: skip
    return d / "loops", d / "tiny", d / "noop.bpf.o"


def wide_policy(top: str = "/nonexistent") -> str:
    """4 policies x 256 selectors per part (1024 per part) on paths under `top`, 4 responses
    each: nothing matches."""
    docs = []
    for p in range(4):
        spec: dict[str, object] = {}
        for part, key, ops in (
            ("file", "targetFilePath", ["createFile", "modifyFile", "deleteFile"]),
            ("process", "processExecutable", ["fork", "exec"]),
        ):
            names = [f"{part[0]}{p}x{i}" for i in range(256)]
            spec[part] = {
                "selectors": [{"name": n, "operation": ops, key: [f"{top}/{n}/**"]} for n in names],
                "responses": [
                    {"match": names[i : i + 64], "actions": ["alert"]} for i in range(0, 256, 64)
                ],
            }
        docs.append(
            {
                "apiVersion": "stockade.dev/v1alpha1",
                "kind": "ContainerPolicy",
                "metadata": {"name": f"wide-{p}", "namespace": "bench"},
                "spec": spec,
            }
        )
    return "\n---\n".join(json.dumps(d) for d in docs)


class Sensor:
    """`stockade sensor --standalone` in the background, until stopped."""

    def __init__(self, policy: Path, containers: Path, out: Path) -> None:
        state = tempfile.mkdtemp(prefix="state-", dir=out.parent)  # no cached bundle: a cold start
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stockade.sensor.cli", "--standalone", "--policy",
             str(policy), "--containers", str(containers), "--output", f"jsonl:{out}",
             "--state-dir", state],
            stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        assert self.proc.stderr is not None
        self.mode = "?"  # what the sensor's probe chose, as it printed it
        for line in self.proc.stderr:
            if line.startswith("stockade sensor: mode "):
                self.mode = line.removeprefix("stockade sensor: mode ").strip()
            if "applied generation" in line:
                return
        raise RuntimeError("sensor did not start")

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=60)
        return err.strip().splitlines()[-1]


class Floor:
    """Empty programs where the sensor of `mode` attaches its own, until stopped."""

    def __init__(self, obj_file: Path, mode: Mode) -> None:
        hooks = {Mode.LSM: LSM_HOOKS, Mode.FMODRET: FMODRET_HOOKS}.get(mode)
        deny = list(present_hooks(hooks).values()) if hooks else []
        self.obj = BpfObject(obj_file)
        for hook in (*LSM_HOOKS.values(), *FMODRET_HOOKS.values()):
            self.obj.program(f"noop_{hook.point}").set_autoload(hook in deny)
        self.obj.load()
        tp = self.obj.program("noop_tp")
        points = [("sched", "sched_process_exec"), ("sched", "sched_process_exit")]
        if not deny:
            points += [("syscalls", f"sys_{k}_{h.point}") for h in present_file_syscalls()
                       for k in ("enter", "exit")]  # fmt: skip
        self.links = [tp.attach_tracepoint(*p) for p in points]
        self.links += [self.obj.program(f"noop_{h.point}").attach() for h in deny]
        self.mode = f"{mode} (empty programs)"

    def stop(self) -> str:
        for link in self.links:
            link.destroy()
        self.obj.close()
        return ""


def timed(argv: list[str], cgroup: Path) -> float:
    def join() -> None:
        (cgroup / "cgroup.procs").write_text("0")

    t = time.perf_counter()
    subprocess.run(argv, preexec_fn=join, check=True)
    return time.perf_counter() - t


def in_vm(args: argparse.Namespace) -> int:
    """Run this script in the BPF LSM test VM (lsm mode); the counts not given are the VM's
    defaults. e2e/vm/run builds the BPF objects on this machine first (they are CO-RE)."""
    argv = [sys.executable, str(Path(__file__).resolve())]
    for name in ("rounds", "opens", "execs"):
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    run = [str(REPO / "e2e" / "vm" / "run"), "--quiet", "--timeout", str(args.timeout)]
    if args.lsm:
        run += ["--lsm", args.lsm]
    return subprocess.run([*run, "--", *argv], check=False).returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, help=f"default {DEFAULTS[0]}")
    ap.add_argument("--opens", type=int, help=f"default {DEFAULTS[1]}")
    ap.add_argument("--execs", type=int, help=f"default {DEFAULTS[2]}")
    ap.add_argument("--vm", action="store_true", help="run in lsm mode in the test VM")
    ap.add_argument("--timeout", type=float, default=1800.0, help="for --vm, seconds")
    ap.add_argument("--lsm", help="for --vm: the VM kernel's lsm= (without bpf: fmodret mode)")
    add_arguments(ap)
    args = ap.parse_args()
    if args.vm and not IN_VM:
        sys.exit(in_vm(args))
    rounds, opens, execs = (
        given if given is not None else default
        for given, default in zip(
            (args.rounds, args.opens, args.execs), QUICK if args.quick else DEFAULTS, strict=True
        )
    )
    if not IN_VM:  # in the VM the repository is read-only and the objects are built already
        subprocess.run([str(REPO / "bpf" / "build")], check=True, capture_output=True)
    d = Path(tempfile.mkdtemp(prefix="stk-bench-", dir="/var/tmp"))
    cgroup = Path(tempfile.mkdtemp(prefix="stk-bench-", dir=CGROUP2))
    try:
        loops, tiny, noop = build(d)
        mode = probe_mode().mode
        target = d / "existing"
        target.write_text("x")
        (d / "wide.yaml").write_text(wide_policy())
        (d / "wide-var.yaml").write_text(wide_policy("/var/nonexistent"))  # target's top dir
        # a 400-byte path: looked up among entries longer than 255 bytes too (docs/kernel.md)
        long_target = d / ("l" * 120) / ("m" * 120) / ("n" * 120) / "existing"
        long_target.parent.mkdir(parents=True)
        long_target.write_text("x")
        (d / "wide-long.yaml").write_text(wide_policy(str(d / ("l" * 120))))
        shutil.copy(REPO / "examples" / "policies" / "default.yaml", d / "default.yaml")
        (d / "c.json").write_text(json.dumps({str(cgroup): {"kubernetes": {"namespace": "bench"}}}))

        def sensor(policy: str) -> Callable[[], Sensor | Floor]:
            return lambda: Sensor(d / policy, d / "c.json", d / "out.jsonl")

        open_loop = [str(loops), "open", str(opens), str(target)]
        exec_loop = [str(loops), "exec", str(execs), str(tiny)]
        cases: list[tuple[str, Callable[[], Sensor | Floor], list[str], float | None]] = [
            ("open/close, empty programs (the floor)", lambda: Floor(noop, mode), open_loop, None),
            ("open/close, 1024 selectors match nothing", sensor("wide.yaml"), open_loop, 1.03),
            ("open/close, same, patterns under /var (walked)", sensor("wide-var.yaml"), open_loop,
             None),
            ("open/close, same, a 400-byte path (long lookups)", sensor("wide-long.yaml"),
             [str(loops), "open", str(opens), str(long_target)], None),
            ("fork+exec+wait, 1024 selectors match nothing", sensor("wide.yaml"), exec_loop, 1.05),
            ("fork+exec+wait, default policy, JSONL written", sensor("default.yaml"), exec_loop,
             1.15),
        ]  # fmt: skip
        where = "the test VM (qemu TCG)" if IN_VM else "this machine"
        print(f"kernel {os.uname().release} in {where}: {rounds} rounds, {opens} opens, "
              f"{execs} execs")  # fmt: skip
        print(f"{'case':50} {'mode':5} {'without':>9} {'with':>9} {'ratio':>7} target")
        modes: set[str] = set()
        figures: list[Figure] = []
        for name, start, argv, goal in cases:
            ratios, base, withs = [], [], []
            for _ in range(rounds):
                b = timed(argv, cgroup)
                running = start()
                modes.add(running.mode)
                w = timed(argv, cgroup)
                time.sleep(0.5)  # let the reader catch up before the stats line
                stats = running.stop()
                base.append(b)
                withs.append(w)
                ratios.append(w / b)
            r = statistics.median(ratios)
            verdict = "" if goal is None else f"{'<=' if r <= goal else '> '}{goal}"
            print(
                f"{name:50} {running.mode.split()[0]:5} {statistics.median(base):8.3f}s "
                f"{statistics.median(withs):8.3f}s {r:6.3f}x {verdict:6}"
                f"  {stats.split('stats ')[-1]}"
            )
            figures.append(figure(
                f"{name}: with / without", ratios, "x", None if goal is None else f"<= {goal}",
                note=f"{running.mode.split()[0]} mode; {statistics.median(base):.3f} s without",
            ))  # fmt: skip
        print(f"sensor mode: {'; '.join(sorted(modes))}")  # and why (the probe's reason)
        report(args, figures)
    finally:
        cgroup.rmdir()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
