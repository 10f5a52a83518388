"""Kill mode against the attacks of issue 15: a flood that would push alerts out, paths
deeper than the walk, and the other ways to reach a guarded file (docs/kernel.md, "Attacks")."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stockade.sensor.abi import ActionBits
from stockade.sensor.kernel import Bundle, KillSensor
from stockade.sensor.records import ProcessRecord

from .conftest import Cgroup, Collector, part_tables

pytestmark = pytest.mark.kernel

Load = Callable[[Bundle], int]

# argv: count, every, program, alarm — execs `program` count times, `alarm` every `every`-th
FLOOD_C = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	int n = atoi(argv[1]), every = atoi(argv[2]);
	for (int i = 1; i <= n; i++) {
		char *p = i % every ? argv[3] : argv[4], *a[] = { p, 0 };
		pid_t pid = vfork();
		if (!pid) {
			execve(p, a, 0);
			_exit(127);
		}
		waitpid(pid, 0, 0);
	}
	return 0;
}
"""


def build_c(directory: Path, name: str, source: str) -> Path:
    src, out = directory / f"{name}.c", directory / name
    src.write_text(source)
    subprocess.run(["gcc", "-O2", "-o", str(out), str(src)], check=True)
    return out


@pytest.fixture
def own_sensor(_built: None) -> Iterator[KillSensor]:
    """A sensor of the test's own, whose losses don't count against the session's."""
    with KillSensor() as s:
        s.attach()
        yield s


def test_alerts_survive_an_exec_flood(
    own_sensor: KillSensor, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    """20,000 execs logged, every 200th one alerting, with nobody reading: the log records
    overflow their ring buffer, every alert arrives, and the losses are counted by kind."""
    sensor = own_sensor
    flood = build_c(workdir, "flood", FLOOD_C)
    alarm = workdir / "alarm"
    shutil.copy(tiny, alarm)
    tables = part_tables(
        "process",
        {"exec": 0b11},
        [(0b01, 0, ActionBits.LOG), (0b10, 0, ActionBits.ALERT)],
        any_path=0b01,
        exact={str(alarm): 0b10},
        any_name=0b11,
    )
    sensor.reload(Bundle(1, {cgroup.id: {"process": 0b11}}, {"process": tables}))
    collector = Collector(sensor)
    before = sensor.stats()
    n, every = 20_000, 200
    # the consumer is not reading while the flood runs (subprocess.run waits for it)
    t0 = time.monotonic()
    res = subprocess.run(
        [str(flood), str(n), str(every), str(tiny), str(alarm)],
        preexec_fn=cgroup.join(),
        check=False,
    )
    assert res.returncode == 0
    print(f"flood: {n / (time.monotonic() - t0):.0f} execs/s")
    recs = collector.drain()
    collector.close()
    after = sensor.stats()
    lost = {k: after[k] - before[k] for k in ("rb_fail", "lost_log", "lost_alert", "lost_exit")}
    alerts = [
        r for r in recs
        if isinstance(r, ProcessRecord) and ActionBits.ALERT in ActionBits(r.header.actions)
    ]  # fmt: skip
    assert lost["lost_log"] > 0, "the flood did not overflow the log ring buffer"
    assert lost["rb_fail"] == lost["lost_log"] + lost["lost_alert"] + lost["lost_exit"]
    assert lost["lost_alert"] == 0
    assert len(alerts) == n // every
    assert all(r.executable == str(alarm) for r in alerts)
