"""A real `stockade sensor --standalone` and a test cgroup, for the benchmarks that measure
the sensor process itself (pipeline, footprint)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CGROUP2 = Path("/sys/fs/cgroup/unified")
if not (CGROUP2 / "cgroup.procs").exists():
    CGROUP2 = Path("/sys/fs/cgroup")
TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def test_cgroup() -> Iterator[Path]:
    """A new cgroup v2 directory (a stand-in container), removed afterwards."""
    cgroup = Path(tempfile.mkdtemp(prefix="stk-bench-", dir=CGROUP2))
    try:
        yield cgroup
    finally:
        cgroup.rmdir()


def compile_c(d: Path, name: str, source: str) -> Path:
    (d / f"{name}.c").write_text(source)
    subprocess.run(["gcc", "-O2", "-o", str(d / name), str(d / f"{name}.c")], check=True)
    return d / name


# a static binary that only exits: an exec that costs the kernel's exec path and nothing else
TINY_C = 'void _start(void){__asm__ volatile("mov $60,%eax\\n xor %edi,%edi\\n syscall");}\n'


def compile_tiny(d: Path) -> Path:
    (d / "tiny.c").write_text(TINY_C)
    subprocess.run(["gcc", "-static", "-nostdlib", "-O2", "-o", str(d / "tiny"),
                    str(d / "tiny.c")], check=True)  # fmt: skip
    return d / "tiny"


def run_in(cgroup: Path, argv: list[str], cpu: int | None = None) -> str:
    """Run argv inside `cgroup` (on one CPU if given); its stdout."""

    def join() -> None:
        (cgroup / "cgroup.procs").write_text("0")
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return subprocess.run(
        argv, preexec_fn=join, check=True, stdout=subprocess.PIPE, text=True
    ).stdout


class Sensor:
    """`stockade sensor --standalone` writing to `output`, on CPU `cpu` if given, with a
    stats line every `stats_s`; stderr lines collected with their arrival times."""

    def __init__(
        self, d: Path, output: str, cpu: int | None = None, stats_s: float = 0.25,
        extra: tuple[str, ...] = (), state: Path | None = None,
    ) -> None:  # fmt: skip
        """`state`: the sensor's state dir (a given one carries its cached bundle from one
        sensor to the next; default a new one: a cold start)."""
        self.started = time.monotonic()
        state = state or Path(tempfile.mkdtemp(prefix="state-", dir=d))
        self.proc = subprocess.Popen(
            [*(["taskset", "-c", str(cpu)] if cpu is not None else []), sys.executable, "-m",
             "stockade.sensor.cli", "--standalone", "--policy", str(d / "policy.yaml"),
             "--containers", str(d / "containers.json"), "--output", output,
             "--stats-interval", str(stats_s), "--state-dir", str(state), *extra],
            stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout: float = 120.0) -> float:
        """The time the first line matching `pattern` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if re.search(pattern, line):
                    return at
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        tail = "\n".join(line for _, line in self.lines[-10:])
        raise RuntimeError(f"no {pattern!r} from the sensor:\n{tail}")

    def stats(self, after: float = 0.0, timeout: float = 10.0) -> tuple[float, dict[str, int]]:
        """The first stats line that arrived after `after` (monotonic): its time and counters."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if at > after and " stats " in line:
                    return at, json.loads(line.split(" stats ", 1)[1])
            time.sleep(0.02)
        raise RuntimeError("no stats line from the sensor")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the sensor process, all its threads."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def waiting_seconds(self) -> float:
        """Time its threads were ready to run but waited for a CPU (schedstat): what the
        machine's other work took from it."""
        return (
            sum(
                int(stat.read_text().split()[1])
                for stat in Path(f"/proc/{self.proc.pid}/task").glob("*/schedstat")
            )
            / 1e9
        )

    def memory_mib(self, field: str) -> float:
        """A /proc/PID/status memory figure: VmRSS (now), VmHWM (the peak)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
