"""The local stack against a hostile machine: another local user's state directory, pid
files that name someone else's process, a demo record that names a cgroup not the demo's,
two commands at once, hostile STOCKADE_* values, an interrupted build, an unwritable file.

No services run here: each case is refused (or survived) before `up` would start them.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.local.demo import build_rootfs, remove_demo
from stockade.local.kubelet import CGROUP2
from stockade.local.stack import Process, Stack, start_time
from tests.operator.conftest import STOCKADE

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown, cgroups")


def stockade(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STOCKADE), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process whose command line says `sensor`, as another stack's would."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "sensor"])
    deadline = time.monotonic() + 10
    while b"sensor" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


def test_a_pid_file_naming_another_process_is_not_followed(
    tmp_path: Path, victim: subprocess.Popen[bytes]
) -> None:
    """A stale pid file whose pid now belongs to another `... sensor` process: `down`
    leaves that process alone (a pid alone, or with another start time, is not ours)."""
    sensor = Process("sensor", tmp_path)
    for content in (str(victim.pid), f"{victim.pid} {start_time(victim.pid) - 1}"):
        sensor.pidfile.write_text(content)
        assert sensor.pid() is None
        assert sensor.stop() is False
        assert victim.poll() is None


def test_a_started_process_is_found_and_stopped(tmp_path: Path) -> None:
    sensor = Process("sensor", tmp_path)
    sensor.start([sys.executable, "-c", "import time; time.sleep(60)", "sensor"], os.environ)
    pid = sensor.pid()
    assert pid is not None
    assert sensor.stop() is True
    assert (
        not Path(f"/proc/{pid}").exists()
        or b"sensor" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )


@root_only
@pytest.mark.parametrize("how", ["owned", "symlink", "shared-parent", "world-writable"])
def test_a_state_directory_another_user_controls_is_refused(
    tmp_path: Path, victim: subprocess.Popen[bytes], how: str
) -> None:
    """The default state is in /tmp: a local user who made it (or a link to it, or its
    parent) first would have root follow their pid files and symlinks. `down` refuses, in
    one line, and the process their pid file names lives on."""
    planted = tmp_path / "planted"
    (planted / "local").mkdir(parents=True)
    (planted / "local" / "sensor.pid").write_text(str(victim.pid))
    state = planted
    if how == "owned":
        os.chown(planted, NOBODY, NOBODY)
    elif how == "symlink":
        state = tmp_path / "state"
        state.symlink_to(planted)
        os.lchown(state, NOBODY, NOBODY)
    elif how == "shared-parent":
        tmp_path.chmod(0o777)  # not sticky: anyone may rename `planted` away and replace it
    else:
        planted.chmod(0o777)
    env = {**os.environ, "STOCKADE_STATE": str(state)}
    down = stockade(env, "down")
    assert down.returncode == 1, down
    assert down.stderr.startswith(f"stockade down: STOCKADE_STATE={state}: ")
    assert len(down.stderr.splitlines()) == 1
    assert victim.poll() is None
    assert (planted / "local" / "sensor.pid").exists()


def test_down_stops_no_service_whose_pid_was_recycled(
    tmp_path: Path, victim: subprocess.Popen[bytes]
) -> None:
    """services/down followed any live pid in the services' pid files (es.pid is written by
    the Elasticsearch user): now only the service of this state directory is stopped."""
    state = tmp_path / "state"
    for pidfile in ("run/etcd.pid", "run/kube-apiserver.pid", "elasticsearch/run/es.pid"):
        (state / pidfile).parent.mkdir(parents=True, exist_ok=True)
        (state / pidfile).write_text(f"{victim.pid}\n")
    (state / "lock").touch()
    down = stockade({**os.environ, "STOCKADE_STATE": str(state)}, "down")
    assert down.returncode == 0, down
    assert victim.poll() is None and not state.exists()


def test_hostile_environment_values_are_one_line(tmp_path: Path) -> None:
    base = {**os.environ, "STOCKADE_STATE": str(tmp_path / "state")}
    for key, value in [
        ("STOCKADE_OPERATOR_PORT", "70000"),
        ("STOCKADE_SENSOR_PORT", "-1"),
        ("STOCKADE_ES_PORT", "9200; touch /tmp/x"),
        ("STOCKADE_APISERVER_PORT", "0"),
        ("STOCKADE_STATE", "relative/state"),
    ]:
        down = stockade({**base, key: value}, "down")
        assert down.returncode == 1, (key, value, down)
        assert down.stderr.startswith(f"stockade down: {key}=") and "Traceback" not in down.stderr
        assert len(down.stderr.splitlines()) == 1


def test_a_second_command_on_the_same_stack_is_refused(tmp_path: Path) -> None:
    """Two `up`s at once would each start an operator, the loser's pid file orphaning the
    winner's: while one runs, another says so in one line."""
    state = tmp_path / "state"
    state.mkdir()
    env = {**os.environ, "STOCKADE_STATE": str(state)}
    with (state / "lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = stockade(env, "down")
    assert (busy.returncode, busy.stderr) == (
        1, f"stockade down: another `stockade up`, `down` or `demo` is running on {state}\n"
    )  # fmt: skip
    assert state.exists()  # not removed under the running command
    assert stockade(env, "down").returncode == 0  # once it is done
    assert not state.exists()


def test_down_removes_only_a_stack(tmp_path: Path) -> None:
    """A mistyped STOCKADE_STATE (/etc, a home directory) is not removed by `down`."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes").write_text("mine")
    down = stockade({**os.environ, "STOCKADE_STATE": str(precious)}, "down")
    assert (down.returncode, down.stderr) == (
        1, f"stockade down: STOCKADE_STATE={precious}: no stack was started there"
        " (no lock or pki/ca.crt); not removing it\n",
    )  # fmt: skip
    assert (precious / "notes").read_text() == "mine"


def test_demo_with_the_apiserver_gone_is_one_line(
    tmp_path: Path, victim: subprocess.Popen[bytes]
) -> None:
    """The sensor runs but the apiserver doesn't answer: one line naming it, exit 1."""
    if not os.path.exists("/bin/busybox"):
        pytest.skip("the demo's root is built from busybox")
    state = tmp_path / "state"
    (state / "local").mkdir(parents=True)
    (state / "local" / "sensor.pid").write_text(f"{victim.pid} {start_time(victim.pid)}")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    (state / "kubeconfig").write_text(
        json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {
                "server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "users": [{"name": "u", "user": {}}],
        })
    )  # fmt: skip
    demo = stockade({**os.environ, "STOCKADE_STATE": str(state)}, "demo")
    assert demo.returncode == 1 and "Traceback" not in demo.stderr, demo
    assert demo.stderr.startswith("stockade demo: the apiserver (") and "refused" in demo.stderr
    assert len(demo.stderr.splitlines()) == 1


def test_a_file_down_cant_remove_is_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "local" / "sensor.pid").mkdir(parents=True)  # not a file: unlink fails
    (state / "lock").touch()
    down = stockade({**os.environ, "STOCKADE_STATE": str(state)}, "down")
    assert down.returncode == 1 and "Traceback" not in down.stderr, down
    assert down.stderr.startswith("stockade down: ") and "sensor.pid" in down.stderr


def test_an_interrupted_rootfs_build_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or a full disk) halfway through the demo root's busybox links: the next
    `demo` builds it whole instead of failing on the links already there."""
    if not os.path.exists("/bin/busybox"):
        pytest.skip("the demo's root is built from busybox")
    links = 0
    hardlink_to = Path.hardlink_to

    def interrupted(self: Path, target: Path) -> None:
        nonlocal links
        links += 1
        if links == 20:
            raise KeyboardInterrupt
        hardlink_to(self, target)

    root = tmp_path / "demo-rootfs"
    with monkeypatch.context() as patch:
        patch.setattr(Path, "hardlink_to", interrupted)
        with pytest.raises(KeyboardInterrupt):
            build_rootfs(root)
    build_rootfs(root)
    assert (root / "bin" / "sh").stat().st_ino == (root / "bin" / "busybox").stat().st_ino
    assert (root / "bin" / "cp").exists() and (root / "tmp").stat().st_mode & 0o1777 == 0o1777


@root_only
@pytest.mark.kernel
@pytest.mark.parametrize("where", ["outside", "dotdot"])
def test_a_demo_record_naming_another_cgroup_is_left_alone(tmp_path: Path, where: str) -> None:
    """`down` kills and removes the cgroup its demo record names: one that is not a pod's
    (another group of the v2 hierarchy, or one reached by `..`) keeps its processes."""
    other = CGROUP2 / f"stockade-test-{os.urandom(4).hex()}"
    other.mkdir()
    proc = subprocess.Popen(["sleep", "60"])
    try:
        (other / "cgroup.procs").write_text(str(proc.pid))
        named = other if where == "outside" else CGROUP2 / "kubepods.slice" / ".." / other.name
        stack = Stack(tmp_path, "node", 1, 2, {})
        stack.local.mkdir()
        (stack.local / "demo.json").write_text(json.dumps({"cgroup": str(named)}))
        said: list[str] = []
        remove_demo(stack, said.append)
        assert proc.poll() is None and other.exists()
        assert "left alone" in said[0]
    finally:
        proc.kill()
        proc.wait()
        for _ in range(100):
            try:
                other.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)
