"""Hostile inputs on reload and restart (issue 10): the sensor keeps running, the previous
generation keeps enforcing and records keep flowing, whatever the new input does; a sensor
restarted after kill -9 enforces its cached bundle before it reads its inputs."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from .conftest import Cgroup
from .test_reload import _wait_for, tiny_policy

pytestmark = pytest.mark.kernel

READ_MEMORY_MIB = 512  # enough for the large policy below, quickly exceeded by the alias bomb


def alias_bomb() -> str:
    """Nine levels of nine aliases: under 1 KB, 9**9 nodes once expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join([*lines, "process: *a9"]) + "\n"


def large_policy(binary: Path) -> str:
    """A valid policy of 2.7 MB (the reader takes at most 3 MiB) that still blocks `binary`:
    255 more file selectors of 128 paths each (half the path table, so that a bundle like it
    can be written next to it)."""
    doc = json.loads(tiny_policy(binary, ["alert", "block"]))
    doc["file"] = {
        "selectors": [
            {"name": f"f{i}", "operation": ["createFile"],
             "targetFilePath": [f"/var/lib/d{i:03d}/{'x' * 50}/{j:03d}/**" for j in range(128)]}
            for i in range(255)
        ],
        "responses": [{"match": ["f0"], "actions": ["log"]}],
    }  # fmt: skip
    return json.dumps(doc, indent=1)


def metadata_list(binary: Path) -> str:
    """A good policy, then a policy whose metadata is a list (it crashed the old loader)."""
    good = json.dumps({"apiVersion": "stockade.dev/v1alpha1", "kind": "ContainerPolicy",
                       "metadata": {"name": "ok", "namespace": "shop"},
                       "spec": json.loads(tiny_policy(binary, ["log"]))})  # fmt: skip
    bad = "apiVersion: stockade.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: [a]\nspec: {}\n"
    return good + "\n---\n" + bad


HOSTILE: dict[str, Callable[[Path], str]] = {
    "deep nesting": lambda _: "process: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "control character": lambda b: tiny_policy(b, ["log"]).replace("tiny", "ti\x01ny", 1),
    "metadata as a list": metadata_list,
    "alias bomb": lambda _: alias_bomb(),
}


class Sensor:
    """`stockade sensor --standalone` as a process, its stderr lines in a queue."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.policy, self.out = workdir / "p.yaml", workdir / "out.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stockade.sensor.cli", "--standalone", "--policy",
             str(self.policy), "--containers", str(workdir / "c.json"), "--output",
             f"jsonl:{self.out}", "--stats-interval", "1", "--state-dir", str(workdir / "state"),
             "--read-memory", str(READ_MEMORY_MIB), "--read-timeout", "60", *extra],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []  # every line, for failures
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.seen.append(line.rstrip("\n"))
            self.lines.put(self.seen[-1])

    def wait_for(self, text: str, timeout: float = 90.0) -> str:
        """The next stderr line with `text`; fails at once when the sensor has died."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return _wait_for(self.lines, text, 0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    time.sleep(0.2)  # the reader thread's last lines
                    pytest.fail(f"the sensor died (exit {self.proc.returncode}): {self.seen}")
                assert time.monotonic() < deadline, f"no {text!r} in {timeout} s"

    def write_policy(self, text: str) -> None:
        """Replace the policy file at once (never seen half-written)."""
        new = self.policy.with_suffix(".new")
        new.write_text(text)
        os.replace(new, self.policy)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=30) == 0


@pytest.fixture
def setup(cgroup: Cgroup, workdir: Path, tiny: Path, _built: None) -> Iterator[tuple[Path, Path]]:
    """The tiny binary in `workdir`, a policy blocking it, the containers file (`cgroup`)."""
    binary = workdir / "tiny"
    binary.write_bytes(tiny.read_bytes())
    binary.chmod(0o755)
    (workdir / "p.yaml").write_text(tiny_policy(binary, ["alert", "block"]))
    (workdir / "c.json").write_text(json.dumps({str(cgroup.path): {}}))
    yield workdir, binary


class ExecLoop:
    """Runs the blocked binary in `cgroup` over and over (each run one `killed` record), and
    samples the sensor's output file meanwhile."""

    def __init__(self, binary: Path, cgroup: Cgroup, out: Path) -> None:
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", f"while :; do {binary}; echo $?; done"],
            preexec_fn=cgroup.join(), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.out = out
        self.sizes: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            self.sizes.append((time.monotonic(), self.out.stat().st_size))
            time.sleep(0.05)

    def stop(self) -> list[int]:
        """The runs' exit statuses (137: killed)."""
        self._done.set()
        self._sampler.join()
        self.proc.kill()
        out, _ = self.proc.communicate()
        return [int(s) for s in out.split()[:-1]]  # the last one may be cut off

    def longest_stall(self, start: float, end: float) -> float:
        """The longest time between start and end that the output file did not grow."""
        last, longest, size = start, 0.0, None
        for at, now in self.sizes:
            if at < start or at > end:
                size = now
                continue
            if size is not None and now != size:
                longest, last = max(longest, at - last), at
            size = now
        return max(longest, end - last)


@pytest.mark.parametrize("case", [*HOSTILE, "large valid policy"])
def test_reload_keeps_enforcing_and_recording(
    case: str, setup: tuple[Path, Path], cgroup: Cgroup
) -> None:
    workdir, binary = setup
    sensor = Sensor(workdir)
    try:
        sensor.wait_for("applied generation 1")
        loop = ExecLoop(binary, cgroup, sensor.out)
        try:
            time.sleep(1)
            started = time.monotonic()
            if case in HOSTILE:
                sensor.write_policy(HOSTILE[case](binary))
                line = sensor.wait_for("refused:")
                assert f"refused: {sensor.policy}: " in line
                assert line.endswith("; generation 1 stays in force")
            else:
                sensor.write_policy(large_policy(binary))
                line = sensor.wait_for("applied generation 2")
            done = time.monotonic()
            time.sleep(0.5)
            assert sensor.proc.poll() is None, f"the sensor died: {line}"
        finally:
            statuses = loop.stop()
        stall = loop.longest_stall(started, done)
        took = done - started
        # before the reader was a child process: 10.7 s of an 11.3 s reload (large policy)
        assert stall < 2.0, f"no record written for {stall:.1f} s of the {took:.1f} s reload"
        assert len(statuses) > 20 and set(statuses) == {137}  # every run killed, throughout
        assert subprocess.run([str(binary)], preexec_fn=cgroup.join(), check=False).returncode == -9
        assert '"refused_inputs": ' + ("1" if case in HOSTILE else "0") in sensor.wait_for("stats")
    finally:
        sensor.stop()


def test_restart_enforces_the_cache_before_reading(
    setup: tuple[Path, Path], cgroup: Cgroup
) -> None:
    workdir, binary = setup
    first = Sensor(workdir)
    first.wait_for("applied generation 1")
    first.proc.kill()  # kill -9: nothing is cleaned up
    first.proc.wait()
    first.write_policy(alias_bomb())  # what the restarted sensor reads: slow, then refused
    second = Sensor(workdir)
    try:
        assert second.wait_for("mode ").endswith("; probed earlier in this boot)")
        assert "applied generation 1 from the cache" in second.wait_for("applied generation")
        res = subprocess.run([str(binary)], preexec_fn=cgroup.join(), check=False)
        line = second.wait_for("refused:")  # the inputs were read after that exec was killed
        assert res.returncode == -9
        assert f"refused: {second.policy}: " in line
        assert line.endswith("; generation 1 stays in force")
        assert subprocess.run([str(binary)], preexec_fn=cgroup.join(), check=False).returncode == -9
        docs = [json.loads(d) for d in second.out.read_text().splitlines()]
        killed = [d for d in docs if d["event"]["action"] == "exec"]
        assert killed and killed[-1]["cloud_defend"]["outcome"] == "killed"
    finally:
        second.stop()


def test_corrupt_cache_is_refused_and_the_inputs_read(
    setup: tuple[Path, Path], cgroup: Cgroup
) -> None:
    workdir, binary = setup
    first = Sensor(workdir)
    first.wait_for("applied generation 1")
    first.stop()
    cached = workdir / "state" / "applied.json"
    raw = cached.read_bytes()
    assert b'["alert","block"]' in raw
    cached.write_bytes(raw.replace(b'["alert","block"]', b'["log"]'))  # still valid JSON
    second = Sensor(workdir)
    try:
        line = second.wait_for("refused:")
        assert f"refused: cached bundle {cached}: corrupt" in line
        assert line.endswith("; reading the inputs instead")
        assert "(read in" in second.wait_for("applied generation 1")
        assert subprocess.run([str(binary)], preexec_fn=cgroup.join(), check=False).returncode == -9
    finally:
        second.stop()


def test_a_record_flood_leaves_room_for_reloads_and_sigterm(
    setup: tuple[Path, Path], cgroup: Cgroup
) -> None:
    """Write-opens logged as fast as a container can make them: far more records than the
    sensor can write. Reading them must not keep the loop from reloading or stopping."""
    workdir, binary = setup
    target = workdir / "target"
    target.write_text("")
    doc = json.loads(tiny_policy(binary, ["alert", "block"]))
    doc["file"] = {
        "selectors": [{"name": "t", "operation": ["modifyFile"], "targetFilePath": [str(target)]}],
        "responses": [{"match": ["t"], "actions": ["log"]}],
    }
    (workdir / "p.yaml").write_text(json.dumps(doc))
    sensor = Sensor(workdir)
    flood = None
    try:
        sensor.wait_for("applied generation 1")
        flood = subprocess.Popen(
            [sys.executable, "-c", f"import os\nwhile True: os.close(os.open({str(target)!r}, 1))"],
            preexec_fn=cgroup.join(),
        )  # fmt: skip
        time.sleep(1)
        doc["file"]["responses"][0]["actions"] = ["log", "alert"]
        sensor.write_policy(json.dumps(doc))
        sensor.wait_for("applied generation 2", timeout=30)
        sensor.proc.send_signal(signal.SIGTERM)
        assert sensor.proc.wait(timeout=30) == 0
    finally:
        if flood is not None:
            flood.kill()
            flood.wait()
        sensor.stop()


def test_a_full_state_disk_never_stops_enforcement(
    setup: tuple[Path, Path], cgroup: Cgroup
) -> None:
    """The cache is a head start for restarts, not a condition of enforcing (found by attack:
    a full disk refused a valid policy, and the blocked binary ran)."""
    workdir, binary = setup
    disk = workdir / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        (disk / "state").mkdir()
        with suppress(OSError), (disk / "fill").open("wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        sensor = Sensor(workdir, "--state-dir", str(disk / "state"))  # the last one counts
        try:
            sensor.wait_for("applied generation 1")
            assert any("can't keep the bundle for restarts" in line for line in sensor.seen)
            run = subprocess.run([str(binary)], preexec_fn=cgroup.join(), check=False)
            assert run.returncode == -9
        finally:
            sensor.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
