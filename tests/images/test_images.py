"""The images, built by `make images` and run as the chart runs them.

The sensor runs as the DaemonSet's container would (root, hostPID, only the capabilities the
chart grants, the host's bpffs, tracefs, BTF and cgroup v2 bound in) against this machine's
kernel: it probes its mode, loads and attaches its programs and blocks an exec in a cgroup.
The operator runs as its Deployment's (uid 65532, no capabilities, read-only root).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from .conftest import CGROUP2, Images, MakeOci

# the sensor's capabilities in the chart's DaemonSet (capability numbers from
# linux/capability.h): BPF and PERFMON load programs and attach them to tracepoints;
# SYS_RESOURCE raises RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to
SENSOR_CAPABILITIES = {"BPF": 39, "PERFMON": 38, "SYS_RESOURCE": 24}


def grantable(capabilities: dict[str, int]) -> list[str]:
    """Those of `capabilities` in this process's bounding set: no container here can have more
    (this machine withholds SYS_RESOURCE, which kernels from 5.11 on don't need)."""
    with open("/proc/self/status", encoding="ascii") as f:
        (bounding,) = (int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    return [name for name, bit in capabilities.items() if bounding >> bit & 1]


SENSOR_MOUNTS = [
    ("/sys/fs/bpf", "/sys/fs/bpf", False),
    ("/sys/kernel/tracing", "/sys/kernel/tracing", False),
    ("/sys/kernel/security", "/sys/kernel/security", True),
    ("/sys/kernel/btf", "/sys/kernel/btf", True),
    # the host's cgroup v2 hierarchy where a node with no v1 has it (v2 is beside v1 here)
    (str(CGROUP2), "/sys/fs/cgroup", True),
]


def test_operator_starts_as_non_root_on_a_read_only_root(images: Images, oci: MakeOci) -> None:
    op = oci(images.operator)
    spec = op.spec(["stockade", "--help"], read_only=True)
    assert spec["process"]["user"] == {"uid": 65532, "gid": 65532}  # type: ignore[index]
    res = op.run(spec)
    assert res.returncode == 0, res.stderr
    assert "operator" in res.stdout and "sensor" in res.stdout
    res = op.run(op.spec(["stockade", "operator", "--help"], read_only=True))
    assert res.returncode == 0 and "--lease" in res.stdout, res.stderr
    for argv in (["stockade", "version"], ["stockade", "--version"]):
        res = op.run(op.spec(argv, read_only=True))
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(f"stockade {images.version}, CRDs ")
        assert res.stderr == ""  # nothing tried to write to the read-only root


def test_both_carry_the_version_and_license(images: Images) -> None:
    for image in (images.operator, images.sensor):
        assert images.label(image, "org.opencontainers.image.version") == images.version
        assert images.label(image, "org.opencontainers.image.licenses") == "Apache-2.0"
        assert images.label(image, "org.opencontainers.image.source").startswith("https://")


def test_runtime_images_hold_no_compiler(images: Images, oci: MakeOci) -> None:
    for image in (images.operator, images.sensor):
        root = oci(image).rootfs
        found = [c for c in ("clang", "gcc", "cc", "llc", "pip") if (root / "usr/bin" / c).exists()]
        found += [p.name for p in (root / "opt/stockade/bin").glob("pip*")]
        assert not found, f"{image}: {found}"


def test_sensor_ships_every_object_for_both_architectures(images: Images, oci: MakeOci) -> None:
    sensor = oci(images.sensor)
    (site,) = (sensor.rootfs / "opt/stockade/lib").glob("python3*/site-packages")
    shipped = {p.relative_to(site / "stockade/sensor/bpf").as_posix()
               for p in (site / "stockade/sensor/bpf").glob("*/*.bpf.o")}  # fmt: skip
    built = sorted(p.name for p in (Path(__file__).parents[2] / "bpf").glob("*.bpf.c"))
    assert shipped == {f"{arch}/{name[:-2]}.o" for arch in ("x86", "arm64") for name in built}


@pytest.fixture
def cgroup() -> Iterator[Path]:
    if not (CGROUP2 / "cgroup.procs").exists():
        pytest.skip(f"no cgroup v2 hierarchy at {CGROUP2}")
    path = Path(tempfile.mkdtemp(prefix="stk-image-", dir=CGROUP2))
    yield path
    kill = path / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    for _ in range(50):
        try:
            path.rmdir()
            break
        except OSError:
            time.sleep(0.1)


def _pump(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def _wait_for(lines: queue.Queue[str], text: str, timeout: float = 60.0) -> str:
    deadline, seen = time.monotonic() + timeout, list[str]()
    while True:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {text!r} on the sensor's stderr: {seen}") from None
        if text in line:
            return line
        seen.append(line)


def test_sensor_enforces_a_policy_in_this_kernel(
    images: Images, oci: MakeOci, cgroup: Path
) -> None:
    work = Path(tempfile.mkdtemp(prefix="stk-image-", dir="/var/tmp"))
    try:
        blocked = work / "wget"
        shutil.copy("/bin/true", blocked)
        (work / "policy.yaml").write_text(json.dumps({
            "process": {
                "selectors": [{"name": "noWget", "operation": ["exec"],
                               "processExecutable": [str(blocked)]}],
                "responses": [{"match": ["noWget"], "actions": ["alert", "block"]}],
            }
        }))  # fmt: skip
        # the cgroup as the sensor sees it
        (work / "containers.json").write_text(json.dumps({f"/sys/fs/cgroup/{cgroup.name}": {}}))
        sensor = oci(images.sensor)
        inside = "/tmp/work"  # where the DaemonSet's state directory would be bound
        spec = sensor.spec(
            ["stockade", "sensor", "--standalone", "--policy", f"{inside}/policy.yaml",
             "--containers", f"{inside}/containers.json", "--output",
             f"jsonl:{inside}/out.jsonl", "--state-dir", f"{inside}/state",
             "--stats-interval", "1"],
            capabilities=grantable(SENSOR_CAPABILITIES),
            mounts=[*SENSOR_MOUNTS, (str(work), inside, False)],
            # without it the kill-mode probe fails (bpf/probe.bpf.c compares the kernel's
            # tgid with the sensor's os.getpid(), which a PID namespace renumbers) and the
            # sensor falls back to observe
            host_pid=True,
        )  # fmt: skip
        proc = sensor.popen(spec, stderr=subprocess.PIPE)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stderr, lines), daemon=True).start()
        try:
            assert "mode kill" in _wait_for(lines, "mode ")
            _wait_for(lines, "applied generation 1")

            def run(argv: list[str]) -> int:
                def join() -> None:
                    (cgroup / "cgroup.procs").write_text(str(os.getpid()))

                return subprocess.run(argv, preexec_fn=join, check=False).returncode

            assert run(["/bin/true"]) == 0
            assert run([str(blocked)]) == -signal.SIGKILL
            assert subprocess.run([str(blocked)], check=False).returncode == 0  # outside it
            time.sleep(1)
            docs = [json.loads(line) for line in (work / "out.jsonl").read_text().splitlines()]
            alerts = [d for d in docs if d["event"]["kind"] == "alert"]
            assert [a["cloud_defend"]["outcome"] for a in alerts] == ["killed"]
            assert alerts[0]["process"]["executable"] == str(blocked)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        assert code == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_sensor_reports_the_version(images: Images, oci: MakeOci) -> None:
    sensor = oci(images.sensor)
    res = sensor.run(sensor.spec(["stockade", "version"]))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"stockade {images.version}, CRDs ")
