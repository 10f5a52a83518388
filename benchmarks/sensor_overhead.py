"""Sensor overhead, measured side by side in one run (root; not a test).

    .venv/bin/python benchmarks/sensor_overhead.py [--rounds 5] [--quick] [--vm]

Every row is the median over rounds of (time with the sensor) / (time without), the two
measured back to back in every round, inside one test cgroup. Three workloads, each with its
floor (empty programs attached wherever the sensor attaches its own: in kill mode every file
syscall's enter and exit tracepoint and the raw sys_enter/sys_exit tracepoints, which put every
syscall of every task on the kernel's traced path; what no program body can go below), and
beside every other row its ratio to that floor:

* open(O_WRONLY)/close of an existing file (a C loop): bundles of 0, 64 and 1024 file and
  process selectors whose responses match nothing (1024: target <= 1.03x, and <= 1.10x of the
  floor); the 1024 under /var (the loop's file is in /var/tmp, so every open is walked and
  looked up in full: the first-component filter can't help); the same for a 400-byte path
  (also looked up among the entries longer than 255 bytes);
* fork+exec+wait of a tiny static binary (a C loop): the same bundles (1024: target <= 1.05x),
  and the default policy (every exec logged, the sensor reading the ring buffer and writing
  JSON lines: target <= 1.15x including user space);
* a build: untar a generated C project and compile it with make and the host's cc, under
  the default policy (file-heavy: every compiler process is logged, the linked program is an
  executable created).

The sensor is the real `stockade sensor --standalone` process; "without" is no sensor at all.
The loops are C programs (a Python loop would hide the cost). `--cpu-time` takes the
workload's CPU time (user + system, with its children's) instead of wall time: steadier
while other jobs share the cores, but blind to the sensor's own user space. `--profile`
prints each BPF program's ns per run and per iteration (kernel.bpf_stats_enabled): the
figures that hold while other jobs share the machine. `--quick` runs one round of
small loops (seconds; for checking that the benchmark still works, not for figures). The
sensor probes its mode: `kill` on this machine's kernel; `--vm` runs the same script in lsm
mode inside the BPF LSM test VM (`e2e/vm/run`, qemu TCG: emulation makes everything 10-30x
slower, so the VM's default counts are smaller and only the ratios compare); `--vm --lsm LIST`
without bpf in LIST, in fmodret mode. The VM's figures are named by their mode
(`lsm.open.selectors_1024`, `fmodret....`; kill mode's have no prefix) and carry no target
(the targets are for a real node); `--vm --json PATH` writes them as the guest computed them.
`make bench` leaves `--vm` out (minutes of emulation; docs/kernel.md keeps its table).
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
from dataclasses import dataclass
from pathlib import Path

from _figures import Figure, add_arguments, figure, report, without_json

from stockade.sensor.kernel import (
    FMODRET_HOOKS,
    LSM_HOOKS,
    io_uring_tracepoint,
    present_file_syscalls,
    present_hooks,
)
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
# (rounds, opens, execs, C files in the build) by default: on this machine, and in the test VM
# under TCG; and for --quick
DEFAULTS = (3, 40_000, 500, 8) if IN_VM else (5, 200_000, 3_000, 30)
QUICK = (1, 20_000, 200, 4)

TINY_C = 'void _start(void){__asm__ volatile("mov $60,%eax\\n xor %edi,%edi\\n syscall");}\n'
# the BTF tracepoints the sensor attaches to: in every mode, and (the 32-bit syscall ABI and
# io_uring) in kill mode
BTF_SHARED = ("sched_process_fork", "cgroup_mkdir", "cgroup_rmdir")
BTF_KILL = ("sys_enter", "sys_exit", *filter(None, [io_uring_tracepoint()]))
BTF_TRACEPOINTS = BTF_SHARED + BTF_KILL
# empty programs for the floor: one for every tracepoint, one per BTF tracepoint, one per LSM
# hook and per security_* function (fmodret)
NOOP_C = "\n".join(
    [
        '#include "vmlinux.h"',
        "#include <bpf/bpf_helpers.h>",
        'char LICENSE[] SEC("license") = "GPL";',
        'SEC("tracepoint") int noop_tp(void *ctx) { return 0; }',
        *(f'SEC("tp_btf/{tp}") int noop_{tp}(void *ctx) {{ return 0; }}' for tp in BTF_TRACEPOINTS),
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


def wide_policy(selectors: int = 1024, top: str = "/nonexistent") -> str:
    """`selectors` file and as many process selectors (in policies of up to 256 per part) on
    paths under `top`, in responses of 64: nothing matches. 0: none for the test container
    (one selector, in another namespace: a bundle must have one)."""
    docs = []
    for p in range(max(1, -(-selectors // 256))):
        spec: dict[str, object] = {}
        n = max(1, min(256, selectors - 256 * p))
        for part, key, ops in (
            ("file", "targetFilePath", ["createFile", "modifyFile", "deleteFile"]),
            ("process", "processExecutable", ["fork", "exec"]),
        ):
            names = [f"{part[0]}{p}x{i}" for i in range(n)]
            spec[part] = {
                "selectors": [{"name": n, "operation": ops, key: [f"{top}/{n}/**"]} for n in names],
                "responses": [
                    {"match": names[i : i + 64], "actions": ["alert"]} for i in range(0, n, 64)
                ],
            }
        namespace = "bench" if selectors else "elsewhere"
        docs.append(
            {
                "apiVersion": "stockade.dev/v1alpha1",
                "kind": "ContainerPolicy",
                "metadata": {"name": f"wide-{p}", "namespace": namespace},
                "spec": spec,
            }
        )
    return "\n---\n".join(json.dumps(d) for d in docs)


def c_project(d: Path, files: int) -> Path:
    """A small C project (`files` sources and a Makefile) as a tarball, for the build workload."""
    src = d / "proj"
    src.mkdir()
    for i in range(files):
        (src / f"m{i}.c").write_text(
            "#include <string.h>\n"
            f"int f{i}(const char *s) {{ int n = 0; for (; *s; s++) n = n * 31 + *s; "
            f"return n ^ (int)strlen(s) ^ {i}; }}\n"
        )
    calls = " + ".join(f"f{i}(argv[0])" for i in range(files))
    decls = "".join(f"int f{i}(const char *);\n" for i in range(files))
    (src / "main.c").write_text(
        f"{decls}int main(int argc, char **argv) {{ return ({calls}) & 1; }}\n"
    )
    objs = " ".join(f"m{i}.o" for i in range(files))
    (src / "Makefile").write_text(f"prog: main.o {objs}\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O1 -c $<\n")
    subprocess.run(["tar", "cf", str(d / "proj.tar"), "-C", str(d), "proj"], check=True)
    shutil.rmtree(src)
    return d / "proj.tar"


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
        btf = BTF_SHARED if deny else BTF_TRACEPOINTS
        for name in BTF_KILL:
            self.obj.program(f"noop_{name}").set_autoload(name in btf)
        self.obj.load()
        tp = self.obj.program("noop_tp")
        points = [("sched", "sched_process_exec"), ("sched", "sched_process_exit")]
        if not deny:  # kill mode: the file syscalls and mmap (KillSensor.attach)
            points += [("syscalls", f"sys_{k}_{h.point}") for h in present_file_syscalls()
                       for k in ("enter", "exit")]  # fmt: skip
            points.append(("syscalls", "sys_enter_mmap"))
        self.links = [tp.attach_tracepoint(*p) for p in points]
        self.links += [self.obj.program(f"noop_{name}").attach() for name in btf]
        self.links += [self.obj.program(f"noop_{h.point}").attach() for h in deny]
        self.mode = f"{mode} (empty programs)"

    def stop(self) -> str:
        for link in self.links:
            link.destroy()
        self.obj.close()
        return ""


@dataclass(frozen=True)
class Case:
    """A row: `name` is stable (for machine-readable results); `policy` the sensor's policy
    file (None: the floor, empty programs); `floor` the floor row of the same workload."""

    name: str
    title: str
    workload: str  # a key of the workloads in main(): open, open-long, exec, build
    policy: str | None
    floor: str | None = None
    target: float | None = None  # on the ratio (with / without)
    floor_target: float | None = None  # on the ratio to the floor's


CASES = [
    Case("open.floor", "open/close, empty programs (the floor)", "open", None),
    Case("open.selectors_0", "open/close, no selector for the container", "open", "wide-0.yaml",
         "open.floor"),
    Case("open.selectors_64", "open/close, 64 selectors match nothing", "open", "wide-64.yaml",
         "open.floor"),
    Case("open.selectors_1024", "open/close, 1024 selectors match nothing", "open",
         "wide-1024.yaml", "open.floor", 1.03, 1.10),
    Case("open.selectors_1024_walked", "open/close, same, patterns under /var (walked)", "open",
         "wide-var.yaml", "open.floor"),
    Case("open.selectors_1024_long_path", "open/close, same, a 400-byte path (long lookups)",
         "open-long", "wide-long.yaml", "open.floor"),
    Case("exec.floor", "fork+exec+wait, empty programs (the floor)", "exec", None),
    Case("exec.selectors_0", "fork+exec+wait, no selector for the container", "exec", "wide-0.yaml",
         "exec.floor"),
    Case("exec.selectors_64", "fork+exec+wait, 64 selectors match nothing", "exec",
         "wide-64.yaml", "exec.floor"),
    Case("exec.selectors_1024", "fork+exec+wait, 1024 selectors match nothing", "exec",
         "wide-1024.yaml", "exec.floor", 1.05),
    Case("exec.default_policy", "fork+exec+wait, default policy, JSONL written", "exec",
         "default.yaml", "exec.floor", 1.15),
    Case("build.floor", "untar+make a C project, empty programs (the floor)", "build", None),
    Case("build.default_policy", "untar+make a C project, default policy, JSONL written",
         "build", "default.yaml", "build.floor"),
]  # fmt: skip


STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def program_times(pid: int) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of each BPF program process `pid` holds, by name (counted while
    kernel.bpf_stats_enabled is 1; the names from bpftool)."""
    shown = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    names = {p["id"]: p.get("name", "?") for p in json.loads(shown)}
    by_id: dict[int, tuple[int, int]] = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        info = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        if "run_cnt" in info:
            by_id[int(info["prog_id"])] = (int(info["run_time_ns"]), int(info["run_cnt"]))
    return {names.get(i, str(i)): v for i, v in by_id.items()}


def timed(argv: list[str], cgroup: Path, cpu: bool = False) -> float:
    """Seconds argv took: wall-clock, or (cpu) the CPU time it and the children it waited for
    used, user + system (BPF programs run in system time; waiting for a core doesn't count)."""

    def join() -> None:
        (cgroup / "cgroup.procs").write_text("0")

    t = time.perf_counter()
    proc = subprocess.Popen(argv, preexec_fn=join)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv)
    return usage.ru_utime + usage.ru_stime if cpu else time.perf_counter() - t


def in_vm(args: argparse.Namespace) -> int:
    """Run this script with the same arguments in the BPF LSM test VM (lsm mode); the counts
    not given are the VM's defaults. e2e/vm/run builds the BPF objects on this machine first
    (they are CO-RE). The figures are computed in the VM, which writes them into a directory
    it shares with this machine; --json copies them from there. Their command line is this
    one: the guest keeps --vm (STOCKADE_VM tells it that it is inside)."""
    run = [str(REPO / "e2e" / "vm" / "run"), "--quiet", "--timeout", str(args.timeout)]
    if args.lsm:
        run += ["--lsm", args.lsm]
    argv = [sys.executable, str(Path(__file__).resolve()), *without_json(sys.argv[1:])]
    with tempfile.TemporaryDirectory(prefix="stk-bench-vm-", dir="/var/tmp") as share:
        out = Path(share) / "figures.json"
        code = subprocess.run(
            [*run, "--share", share, "--", *argv, "--json", str(out)], check=False
        ).returncode
        if args.json and code == 0:
            shutil.copy(out, args.json)
    return code


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, help=f"default {DEFAULTS[0]}")
    ap.add_argument("--opens", type=int, help=f"default {DEFAULTS[1]}")
    ap.add_argument("--execs", type=int, help=f"default {DEFAULTS[2]}")
    ap.add_argument("--build-files", type=int, help=f"C files in the build, default {DEFAULTS[3]}")
    ap.add_argument("--only", help="the cases whose names start with one of these (comma list)")
    ap.add_argument(
        "--profile", action="store_true",
        help="per sensor row, each BPF program's ns per run and per iteration (bpf_stats; "
        "the ratios then include the stats' cost)",
    )  # fmt: skip
    ap.add_argument(
        "--cpu-time", action="store_true",
        help="ratios of the workload's CPU time instead of wall time (steadier on a shared "
        "machine; leaves out the sensor's own user space)",
    )  # fmt: skip
    ap.add_argument("--vm", action="store_true", help="run in lsm mode in the test VM")
    ap.add_argument("--timeout", type=float, default=1800.0, help="for --vm, seconds")
    ap.add_argument("--lsm", help="for --vm: the VM kernel's lsm= (without bpf: fmodret mode)")
    add_arguments(ap)  # --quick: the defaults QUICK, seconds; --json
    args = ap.parse_args()
    if args.vm and not IN_VM:
        sys.exit(in_vm(args))
    given = (args.rounds, args.opens, args.execs, args.build_files)
    rounds, opens, execs, files = (
        g if g is not None else default
        for g, default in zip(given, QUICK if args.quick else DEFAULTS, strict=True)
    )
    if not IN_VM:  # in the VM the repository is read-only and the objects are built already
        subprocess.run([str(REPO / "bpf" / "build")], check=True, capture_output=True)
    d = Path(tempfile.mkdtemp(prefix="stk-bench-", dir="/var/tmp"))
    cgroup = Path(tempfile.mkdtemp(prefix="stk-bench-", dir=CGROUP2))
    stats_before = STATS.read_text().strip()
    try:
        loops, tiny, noop = build(d)
        mode = probe_mode().mode
        prefix = "" if mode is Mode.KILL else f"{mode}."  # lsm.open.floor, ...: kill's names stay
        target = d / "existing"
        target.write_text("x")
        for n in (0, 64, 1024):
            (d / f"wide-{n}.yaml").write_text(wide_policy(n))
        (d / "wide-var.yaml").write_text(wide_policy(1024, "/var/nonexistent"))  # target's top
        # a 400-byte path: looked up among entries longer than 255 bytes too (docs/kernel.md)
        long_target = d / ("l" * 120) / ("m" * 120) / ("n" * 120) / "existing"
        long_target.parent.mkdir(parents=True)
        long_target.write_text("x")
        (d / "wide-long.yaml").write_text(wide_policy(1024, str(d / ("l" * 120))))
        shutil.copy(REPO / "examples" / "policies" / "default.yaml", d / "default.yaml")
        (d / "c.json").write_text(json.dumps({str(cgroup): {"kubernetes": {"namespace": "bench"}}}))
        c_project(d, files)
        workloads = {  # argv, iterations
            "open": ([str(loops), "open", str(opens), str(target)], opens),
            "open-long": ([str(loops), "open", str(opens), str(long_target)], opens),
            "exec": ([str(loops), "exec", str(execs), str(tiny)], execs),
            "build": (["sh", "-c", f"cd {d} && rm -rf proj && tar xf proj.tar && make -s -C proj"],
                      1),
        }  # fmt: skip
        if args.profile:
            STATS.write_text("1")

        def start(case: Case) -> Sensor | Floor:
            if case.policy is None:
                return Floor(noop, mode)
            return Sensor(d / case.policy, d / "c.json", d / "out.jsonl")

        where = "the test VM (qemu TCG)" if IN_VM else "this machine"
        load = os.getloadavg()[0]
        clock = "CPU time" if args.cpu_time else "wall-clock time"
        print(f"kernel {os.uname().release} in {where}: {rounds} rounds, {opens} opens, "
              f"{execs} execs, a build of {files} C files, {clock}; load {load:.2f}")  # fmt: skip
        print(f"{'case':54} {'mode':5} {'without':>9} {'with':>9} {'ratio':>7} {'target':7} "
              f"{'/floor':>7} target")  # fmt: skip
        modes: set[str] = set()
        figures: list[Figure] = []
        floors: dict[str, float] = {}
        prefixes = tuple(args.only.split(",")) if args.only else ("",)
        for case in [c for c in CASES if c.name.startswith(prefixes)]:
            ratios, base, withs = [], [], []
            argv, iterations = workloads[case.workload]
            profile: list[str] = []
            for _ in range(rounds):
                b = timed(argv, cgroup, args.cpu_time)
                running = start(case)
                modes.add(running.mode)
                if args.profile and isinstance(running, Sensor):
                    before = program_times(running.proc.pid)
                w = timed(argv, cgroup, args.cpu_time)
                if args.profile and isinstance(running, Sensor):
                    after = program_times(running.proc.pid)
                    profile = [
                        f"    {name:20} {n / iterations:7.2f} runs {t / n:8.1f} ns/run "
                        f"{t / iterations:8.1f} ns per iteration"
                        for name, (t0, n0) in sorted(before.items())
                        for t, n in [(after[name][0] - t0, after[name][1] - n0)]
                        if n
                    ]  # the last round's
                time.sleep(0.5)  # let the reader catch up before the stats line
                stats = running.stop()
                base.append(b)
                withs.append(w)
                ratios.append(w / b)
            r = statistics.median(ratios)
            if case.policy is None:
                floors[case.name] = r
            vs_floor = r / floors[case.floor] if case.floor in floors else None
            print(
                f"{case.title:54} {running.mode.split()[0]:5} {statistics.median(base):8.3f}s "
                f"{statistics.median(withs):8.3f}s {r:6.3f}x {verdict(r, case.target):7} "
                + (f"{vs_floor:6.3f}x {verdict(vs_floor, case.floor_target):7}"
                   if vs_floor is not None else f"{'':7} {'':7}")
                + f"  {stats.split('stats ')[-1]}"
            )  # fmt: skip
            if profile:
                print("\n".join(profile))
            note = f"{running.mode.split()[0]} mode; {statistics.median(base):.3f} s without"
            bound, floor_bound = _target(case.target), _target(case.floor_target)
            if IN_VM:  # emulated: the targets are for a real node
                note += f"; in the test VM (qemu TCG, kernel {os.uname().release}): indicative"
                note += f", the target {bound} is for a real node" if bound else ""
                bound = floor_bound = None
            figures.append(figure(prefix + case.name, ratios, "x", bound, note=note))
            if vs_floor is not None:
                figures.append(figure(f"{prefix}{case.name}.vs_floor", vs_floor, "x", floor_bound))
        print(f"sensor mode: {'; '.join(sorted(modes))}")  # and why (the probe's reason)
        report(args, figures)
    finally:
        if args.profile:
            STATS.write_text(stats_before)
        cgroup.rmdir()
        shutil.rmtree(d, ignore_errors=True)


def _target(bound: float | None) -> str | None:
    return None if bound is None else f"<= {bound}"


def verdict(value: float, target: float | None) -> str:
    return "" if target is None else f"{'<=' if value <= target else '> '}{target}"


if __name__ == "__main__":
    main()
