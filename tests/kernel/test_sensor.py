"""Kill-mode programs in the real kernel: records, paths, volumes, blocking, isolation."""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stockade.policy.model import PartName
from stockade.policy.tables import PartTables
from stockade.sensor.abi import ActionBits, Hook, PathTable, RecordKind
from stockade.sensor.kernel import Bundle, KillSensor
from stockade.sensor.records import FileRecord, ProcessRecord

from .conftest import Cgroup, Collector, part_tables

pytestmark = pytest.mark.kernel

Load = Callable[[Bundle], int]
FILE_OPS = ["createExecutable", "modifyExecutable", "createFile", "modifyFile", "deleteFile"]
HOOK_FAMILY: dict[int, str] = {
    Hook.OPEN: "open", Hook.OPENAT: "open", Hook.OPENAT2: "open", Hook.CREAT: "open",
    Hook.UNLINK: "unlink", Hook.UNLINKAT: "unlink", Hook.RENAME: "rename",
    Hook.RENAMEAT: "rename", Hook.RENAMEAT2: "rename", Hook.LINK: "link", Hook.LINKAT: "link",
    Hook.CHMOD: "chmod", Hook.FCHMOD: "chmod", Hook.FCHMODAT: "chmod", Hook.FCHMODAT2: "chmod",
    Hook.TRUNCATE: "truncate", Hook.FTRUNCATE: "truncate", Hook.MKNOD: "mknod",
    Hook.MKNODAT: "mknod",
}  # fmt: skip

# Absolute and relative paths, a dirfd, rename, unlink via dirfd, chmod, truncate.
FILE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    d = sys.argv[1]
    os.chdir(d)
    os.mkdir("sub")
    os.close(os.open(d + "/abs.txt", os.O_WRONLY | os.O_CREAT, 0o644))
    os.close(os.open("rel.txt", os.O_WRONLY | os.O_CREAT, 0o755))
    dfd = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
    os.close(os.open("at.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=dfd))
    os.close(os.open(d + "/abs.txt", os.O_WRONLY | os.O_TRUNC))
    os.close(os.open("abs.txt", os.O_RDONLY))
    os.chmod("abs.txt", 0o755)
    os.rename("abs.txt", "sub/moved.txt")
    os.unlink("at.txt", dir_fd=dfd)
    os.truncate("rel.txt", 0)
    """
)


def py(script: str, *args: str) -> list[str]:
    return [sys.executable, "-S", "-B", "-c", script, *args]


def file_bundle(cg: Cgroup, generation: int = 1, responses: int = 1) -> Bundle:
    """Selector 0: every file operation anywhere; response (unless 0): log."""
    tables = part_tables(
        "file", {op: 1 for op in FILE_OPS}, [(1, 0, ActionBits.LOG)][:responses], any_path=1
    )
    return Bundle(generation, {cg.id: {"file": 1}}, {"file": tables})


def file_records(recs: list[ProcessRecord | FileRecord], under: Path) -> list[FileRecord]:
    return [r for r in recs if isinstance(r, FileRecord) and r.path.startswith(str(under))]


def test_file_operations_exact_records(
    sensor: KillSensor, collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    load(file_bundle(cgroup, generation=41))
    res, recs = collector.run(py(FILE_SCRIPT, str(workdir)), cgroup)
    assert res.returncode == 0, res.stderr
    d = str(workdir)
    got = [
        (HOOK_FAMILY[r.header.hook], set(r.ops), r.path) for r in recs if isinstance(r, FileRecord)
    ]
    assert got == [
        ("open", {"createFile"}, f"{d}/abs.txt"),
        ("open", {"createFile", "createExecutable"}, f"{d}/rel.txt"),
        ("open", {"createFile"}, f"{d}/sub/at.txt"),
        ("open", {"modifyFile"}, f"{d}/abs.txt"),
        ("chmod", {"modifyFile", "createExecutable"}, f"{d}/abs.txt"),
        ("rename", {"createFile", "modifyFile", "deleteFile"}, f"{d}/sub/moved.txt"),
        ("rename", {"deleteFile"}, f"{d}/abs.txt"),  # the old name is gone
        # createExecutable if the file has an x bit: user space reads the mode (pending)
        ("rename", {"createExecutable"}, f"{d}/sub/moved.txt"),
        ("unlink", {"deleteFile"}, f"{d}/sub/at.txt"),
        ("truncate", {"modifyFile"}, f"{d}/rel.txt"),
    ]
    for r in recs:
        assert r.header.cgroup_id == cgroup.id
        assert r.header.generation == 41
        if isinstance(r, FileRecord):
            assert r.header.actions == ActionBits.LOG
            assert r.header.matched == 1
            assert r.header.outcome == ("pending" if r.ops == {"createExecutable"} else "allowed")
            assert r.volume == "none"
            assert r.comm.startswith("python")
    assert sensor.stats()["rb_fail"] == 0


def test_path_tables_and_responses(
    collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    d = str(workdir)
    ops = {
        "createFile": 0b0001, "modifyFile": 0b0001, "deleteFile": 0b0011,
        "createExecutable": 0b1101, "modifyExecutable": 0b0001,
    }  # fmt: skip
    responses = [
        (0b0011, 0, ActionBits.LOG),
        (0b1100, 0, ActionBits.ALERT),
        (0b0010, 0b0001, ActionBits.AUDIT_BLOCK),
    ]
    tables = part_tables(
        "file",
        ops,
        responses,
        exact={f"{d}/sub/moved.txt": 0b0001},  # selector 0: that file, any op
        children={f"{d}/sub": 0b0010},  # selector 1: d/sub/*, deleteFile
        # 2: d/**, 3: /var/** (createExecutable); LPM values hold their ancestors' bits
        recursive_lpm={d + "/": 0b1100, "/var/": 0b1000},
    )
    load(Bundle(7, {cgroup.id: {"file": 0b1111}}, {"file": tables}))
    res, recs = collector.run(py(FILE_SCRIPT, d), cgroup)
    assert res.returncode == 0, res.stderr
    got = [(r.path, r.header.matched, r.header.actions) for r in file_records(recs, workdir)]
    assert got == [
        (f"{d}/rel.txt", 0b1100, ActionBits.ALERT),
        (f"{d}/abs.txt", 0b1100, ActionBits.ALERT),  # chmod +x
        (f"{d}/sub/moved.txt", 0b0011, ActionBits.LOG),  # exact + children; excluded from row 2
        # the same name as createExecutable, pending: user space reads the file's mode
        (f"{d}/sub/moved.txt", 0b1101, ActionBits.LOG | ActionBits.ALERT),
        (f"{d}/sub/at.txt", 0b0010, ActionBits.LOG | ActionBits.AUDIT_BLOCK),
    ]
    assert all(r.header.generation == 7 for r in recs)


# Inside a chroot of the workdir, so that the paths' first components are ours.
HEADS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.chroot(sys.argv[1])
    os.chdir("/")
    for d in ("stockade-head-a", "stockade-head-b", "short"):
        os.mkdir(d)
        os.close(os.open(d + "/x", os.O_WRONLY | os.O_CREAT, 0o644))
        os.unlink("/" + d + "/x")
    """
)


def test_first_component_filter(
    collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    """A path whose first component is in no table is not walked for the decision, and
    still gets its whole path in a record; first components longer than the kernel's key
    share a key (stockade-he…) and its tables (here exact + recursive), which costs a lookup
    but never a wrong decision."""
    ops = {"createFile": 0b111, "deleteFile": 0b111}
    tables = part_tables(
        "file",
        ops,
        [(0b111, 0, ActionBits.LOG)],
        any_path=0b100,  # selector 2: every path
        exact={"/stockade-head-a/x": 0b001},  # selector 0
        recursive_lpm={"/stockade-head-c/": 0b010},  # selector 1: same 11-byte key as a, b
    )
    heads = {"stockade-head-a": PathTable.EXACT, "stockade-head-c": PathTable.RECURSIVE}
    assert tables.paths.heads == heads
    load(Bundle(1, {cgroup.id: {"file": 0b111}}, {"file": tables}))
    res, recs = collector.run(py(HEADS_SCRIPT, str(workdir)), cgroup)
    assert res.returncode == 0, res.stderr
    got = [(HOOK_FAMILY[r.header.hook], r.path, r.header.matched) for r in recs
           if isinstance(r, FileRecord)]  # fmt: skip
    assert got == [
        ("open", "/stockade-head-a/x", 0b101),
        ("unlink", "/stockade-head-a/x", 0b101),
        ("open", "/stockade-head-b/x", 0b100),
        ("unlink", "/stockade-head-b/x", 0b100),
        ("open", "/short/x", 0b100),
        ("unlink", "/short/x", 0b100),
    ]


RENAMED_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.chroot(sys.argv[1])
    os.chdir("/")
    for d in ("free/sub", "top/free/sub"):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.close(os.open("file", os.O_WRONLY, dir_fd=fd))
        print("opened", flush=True)
        sys.stdin.readline()  # the test renames a directory above the file
        os.close(os.open("file", os.O_WRONLY, dir_fd=fd))
    """
)


def test_rename_above_an_open_file_changes_the_next_decision(
    collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    """The same file (the same dentry, opened through the same directory fd) is decided by
    the path it has at each open: after a directory above it is renamed into a guarded place
    (its first component changes, /free -> /locked; or only a deeper one, /top/free ->
    /top/locked), the next write-open is alerted. Nothing about a file may be remembered
    across a rename above it."""
    tables = part_tables(
        "file",
        {"modifyFile": 1},
        [(1, 0, ActionBits.ALERT)],
        recursive_lpm={"/locked/": 1, "/top/locked/": 1},
    )
    load(Bundle(1, {cgroup.id: {"file": 1}}, {"file": tables}))
    for d in (workdir / "free" / "sub", workdir / "top" / "free" / "sub"):
        d.mkdir(parents=True)
        (d / "file").write_text("x")
    collector.drain()
    proc = subprocess.Popen(
        py(RENAMED_SCRIPT, str(workdir)), preexec_fn=cgroup.join(), text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    for top in (workdir, workdir / "top"):
        assert proc.stdout.readline() == "opened\n"
        (top / "free").rename(top / "locked")
        proc.stdin.write("go\n")
        proc.stdin.flush()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    got = [(r.path, r.header.matched) for r in collector.drain() if isinstance(r, FileRecord)]
    assert got == [("/locked/sub/file", 1), ("/top/locked/sub/file", 1)]  # none for /free/…


def test_outside_cgroup_produces_nothing(
    collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    block = [(1, 0, ActionBits.ALERT | ActionBits.BLOCK)]
    parts: dict[PartName, PartTables] = {
        "file": part_tables("file", {op: 1 for op in FILE_OPS}, block, any_path=1),
        "process": part_tables("process", {"fork": 1, "exec": 1}, block, any_path=1, any_name=1),
    }
    load(Bundle(1, {cgroup.id: {"file": 1, "process": 1}}, parts))
    res, recs = collector.run(
        ["/bin/sh", "-c", "/bin/true && " + shlex.join(py(FILE_SCRIPT, str(workdir)))], None
    )
    assert res.returncode == 0, res.stderr  # nothing was killed
    assert recs == []
    assert (workdir / "sub" / "moved.txt").exists()


def test_blocked_exec_never_runs(collector: Collector, cgroup: Cgroup, load: Load) -> None:
    tables = part_tables(
        "process",
        {"exec": 0b1},
        [(0b1, 0, ActionBits.ALERT | ActionBits.BLOCK)],
        exact={"/usr/bin/echo": 0b1},
        any_name=0b1,
    )
    load(Bundle(3, {cgroup.id: {"process": 0b1}}, {"process": tables}))
    res, recs = collector.run(["/bin/sh", "-c", "/bin/echo MARKER-NEVER; echo after"], cgroup)
    assert "MARKER-NEVER" not in res.stdout
    assert res.stdout == "after\n"
    procs = [
        r for r in recs if isinstance(r, ProcessRecord) and r.header.kind == RecordKind.PROCESS
    ]
    assert len(procs) == 1
    p = procs[0]
    assert p.executable == "/usr/bin/echo"
    assert p.args == ["/bin/echo", "MARKER-NEVER"]
    assert p.header.outcome == "killed"
    assert p.header.actions == ActionBits.ALERT | ActionBits.BLOCK
    exits = [r for r in recs if isinstance(r, ProcessRecord) and r.header.kind == RecordKind.EXIT]
    assert [(e.header.tgid, e.exit_code & 0x7F) for e in exits] == [(p.header.tgid, 9)]


def test_process_name_interactive_and_fork(
    collector: Collector, cgroup: Cgroup, load: Load
) -> None:
    tables = part_tables(
        "process",
        {"exec": 0b011, "fork": 0b100},
        [(0b001, 0, ActionBits.LOG), (0b010, 0, ActionBits.ALERT), (0b100, 0, ActionBits.LOG)],
        names={"true": 0b001},
        any_path=0b111,
        any_name=0b110,
        requires_interactive=0b010,
    )
    load(Bundle(5, {cgroup.id: {"process": 0b111}}, {"process": tables}))
    res, recs = collector.run(["/bin/sh", "-c", "/bin/true; /bin/echo x"], cgroup)
    assert res.returncode == 0
    execs = [r for r in recs if isinstance(r, ProcessRecord) and r.header.hook == Hook.EXEC]
    assert [(r.comm, r.header.matched, r.interactive) for r in execs] == [("true", 0b001, False)]
    forks = [r for r in recs if isinstance(r, ProcessRecord) and r.header.hook == Hook.FORK]
    assert len(forks) == 2  # sh forks for true and echo
    sh_pid = forks[0].header.ppid
    assert all(f.header.ppid == sh_pid and f.header.pid != sh_pid for f in forks)

    # with a controlling terminal (script allocates a pty and makes a new session)
    res, recs = collector.run(["script", "-qec", "/bin/true", "/dev/null"], cgroup)
    assert res.returncode == 0, res.stderr
    execs = [r for r in recs if isinstance(r, ProcessRecord) and r.header.hook == Hook.EXEC]
    true_rec = [r for r in execs if r.comm == "true"]
    assert len(true_rec) == 1
    assert true_rec[0].interactive and true_rec[0].header.matched == 0b011
    assert true_rec[0].header.actions == ActionBits.LOG | ActionBits.ALERT
    assert true_rec[0].sid != 0 and true_rec[0].tty_major != 0


def test_volume_kinds(collector: Collector, cgroup: Cgroup, workdir: Path, load: Load) -> None:
    d = workdir
    (d / "srcdir").mkdir()
    (d / "vol").mkdir()
    (d / "srcfile").write_text("")
    (d / "single").write_text("")
    tables = part_tables(
        "file",
        {op: 0b111 for op in FILE_OPS},
        [(0b111, 0, ActionBits.LOG)],
        any_path=0b111,
        ignore_files=0b010,
        ignore_mounts=0b100,
    )
    load(Bundle(1, {cgroup.id: {"file": 0b111}}, {"file": tables}))
    script = (
        f"mount --make-rprivate / && mount --bind {d}/srcdir {d}/vol && "
        f"mount --bind {d}/srcfile {d}/single && "
        f"echo a > {d}/vol/new && echo b > {d}/single && echo c > {d}/plain"
    )
    res, recs = collector.run(["unshare", "-m", "/bin/sh", "-c", script], cgroup)
    assert res.returncode == 0, res.stderr
    got = [(r.path, r.volume, r.header.matched) for r in file_records(recs, d)]
    assert got == [
        (f"{d}/vol/new", "mount", 0b011),
        (f"{d}/single", "file", 0b001),
        (f"{d}/plain", "none", 0b111),
    ]
    assert all(r.path_from_fd for r in file_records(recs, d))


def test_reload_flips_slot_and_generation(
    sensor: KillSensor, collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    before = sensor.active_slot
    load(file_bundle(cgroup, generation=100))
    assert sensor.active_slot == 1 - before
    _, recs = collector.run(["/bin/sh", "-c", f"echo > {workdir}/a"], cgroup)
    assert [(r.header.generation, r.header.slot) for r in recs] == [(100, 1 - before)]
    load(file_bundle(cgroup, generation=101, responses=0))  # nothing applies any more
    assert sensor.active_slot == before
    _, recs = collector.run(["/bin/sh", "-c", f"echo > {workdir}/b"], cgroup)
    assert recs == []


def test_string_paths_are_normalised(
    collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    d = workdir
    (d / "a").mkdir()
    for name in ("a/b", "a/c", "e", "a/f"):
        (d / name).write_text("")
    load(file_bundle(cgroup))
    script = textwrap.dedent(
        """
        import os, sys
        d = sys.argv[1]
        os.chdir(d + "/a")
        os.unlink("../a/./b")
        os.unlink(d + "/a/../a//c")
        os.unlink("../../../../../../../../.." + d + "/e")
        os.unlink("f")
        """
    )
    res, recs = collector.run(py(script, str(d)), cgroup)
    assert res.returncode == 0, res.stderr
    got = [r.path for r in file_records(recs, d)]
    assert got == [f"{d}/a/b", f"{d}/a/c", f"{d}/e", f"{d}/a/f"]


def test_log_records_gather_and_alerts_end_the_wait_at_once(
    collector: Collector, cgroup: Cgroup, tiny: Path, load: Load
) -> None:
    """RingBuffer.gather (Enforcer.pump's wait after it caught up): a log record waits for
    the next poll (not a wakeup per record: docs/kernel.md, "Output"); an alert ends the wait
    at once (a cgroup record too, and those of the whole machine come at any time: hence the
    tries, of which one must wait the full time)."""
    log = part_tables("process", {"exec": 1}, [(1, 0, ActionBits.LOG)], any_path=1, any_name=1)
    load(Bundle(1, {cgroup.id: {"process": 1}}, {"process": log}))
    waits = []
    for _ in range(5):
        collector.drain()
        subprocess.run([str(tiny)], preexec_fn=cgroup.join(), check=True)
        t = time.monotonic()
        collector.rb.gather(300)
        waits.append(time.monotonic() - t)
    assert max(waits) >= 0.29, waits
    alert = part_tables("process", {"exec": 1}, [(1, 0, ActionBits.ALERT)], any_path=1, any_name=1)
    load(Bundle(2, {cgroup.id: {"process": 1}}, {"process": alert}))
    collector.drain()
    later = threading.Timer(0.1, subprocess.run, [[str(tiny)]], {"preexec_fn": cgroup.join()})
    t = time.monotonic()
    later.start()
    collector.rb.gather(10_000)
    waited = time.monotonic() - t
    later.join()
    assert waited < 5, waited
    assert any(r.header.actions & ActionBits.ALERT for r in collector.drain())
