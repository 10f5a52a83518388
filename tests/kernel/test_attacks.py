"""Kill mode against the attacks of issue 15: a flood that would push alerts out, paths
deeper than the walk, and the other ways to reach a guarded file (docs/kernel.md, "Attacks")."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stockade.policy.model import PartName
from stockade.policy.tables import PartTables
from stockade.sensor.abi import ActionBits, Hook
from stockade.sensor.kernel import Bundle, KillSensor
from stockade.sensor.records import FileRecord, ProcessRecord

from .conftest import Cgroup, Collector, Record, part_tables
from .scenario import Harness
from .test_sensor import py
from .test_standalone import WEB

pytestmark = pytest.mark.kernel

Load = Callable[[Bundle], int]


PROGS = Path(__file__).with_name("progs")


def build_c(directory: Path, name: str, *flags: str) -> Path:
    """progs/<name>.c compiled into directory."""
    out = directory / name
    subprocess.run(["gcc", "-O2", *flags, "-o", str(out), str(PROGS / f"{name}.c")], check=True)
    return out


def test_alerts_survive_an_exec_flood(
    own_sensor: KillSensor, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    """20,000 execs logged, every 200th one alerting, with nobody reading: the log records
    overflow their ring buffer, every alert arrives, and the losses are counted by kind."""
    sensor = own_sensor
    flood = build_c(workdir, "flood")
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


def deep_dir(base: Path, name: str, depth: int) -> None:
    """base/name/name/... `depth` levels down, made through directory fds (the whole path
    may be longer than PATH_MAX)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)


# argv: base, name, depth, then "exec" (exec ./tiny there) or "create" (create f.txt there)
DEEP_SCRIPT = """
import os, sys
base, name, depth, what = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
os.chdir(base)
for _ in range(depth):
    os.chdir(name)
if what == "exec":
    os.execv("./tiny", ["./tiny"])
os.close(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644))
print("created")
"""


def guard_below(d: Path, cg: Cgroup) -> Bundle:
    """Blocks (and alerts) every exec of a program below d, every file created below d."""
    block = [(1, 0, ActionBits.ALERT | ActionBits.BLOCK)]
    below = {str(d) + "/": 1}
    parts: dict[PartName, PartTables] = {
        "process": part_tables("process", {"exec": 1}, block, recursive_lpm=below, any_name=1),
        "file": part_tables("file", {"createFile": 1}, block, recursive_lpm=below),
    }
    return Bundle(1, {cg.id: {"process": 1, "file": 1}}, parts)


@pytest.mark.parametrize(
    ("name", "depth", "truncated"),
    [("d", 100, False), ("x" * 200, 25, True)],
    ids=["100-deep", "over-4KiB"],
)
def test_deep_paths_resolved_or_fail_closed(
    sensor: KillSensor,
    collector: Collector,
    cgroup: Cgroup,
    workdir: Path,
    tiny: Path,
    load: Load,
    name: str,
    depth: int,
    truncated: bool,
) -> None:
    """A program and a file 100 directories deep are seen at their whole absolute paths and
    blocked; one whose path is over 4 KiB (longer than the walk's buffer) is blocked all the
    same (fail closed), its record carries the path's tail, flagged, and counted."""
    deep_dir(workdir, name, depth)
    bottom = "/".join([str(workdir), *[name] * depth])
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with open(tiny, "rb") as src:
        out = os.open("tiny", os.O_WRONLY | os.O_CREAT, 0o755, dir_fd=fd)
        os.write(out, src.read())
        os.close(out)
    os.close(fd)
    load(guard_below(workdir, cgroup))
    before = sensor.stats()["path_truncated"]
    got = []
    for what in ("exec", "create"):
        res, recs = collector.run(py(DEEP_SCRIPT, str(workdir), name, str(depth), what), cgroup)
        assert res.returncode == -9, res.stdout + res.stderr  # killed at once, created nothing
        assert len(recs) >= 1 and recs[0].header.outcome == "killed"
        got.append(recs[0])
    proc, file = got
    assert isinstance(proc, ProcessRecord) and isinstance(file, FileRecord)
    assert (proc.executable_truncated, file.path_truncated) == (truncated, truncated)
    assert sensor.stats()["path_truncated"] - before == (2 if truncated else 0)
    for path, leaf in ((proc.executable, "/tiny"), (file.path, "/f.txt")):
        assert path.startswith("/")
        if truncated:  # the tail that fits
            assert len(path) > 3500 and (bottom + leaf).endswith(path)
        else:
            assert path == bottom + leaf


def guard_files(d: Path, cg: Cgroup) -> Bundle:
    """Blocks (and alerts) every file operation below d."""
    ops = {op: 1 for op in ("createExecutable", "createFile", "modifyFile", "deleteFile")}
    block = [(1, 0, ActionBits.ALERT | ActionBits.BLOCK)]
    tables = part_tables("file", ops, block, recursive_lpm={str(d) + "/": 1})
    return Bundle(1, {cg.id: {"file": 1}}, {"file": tables})


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="int $0x80 is x86's")
def test_compat_syscalls_are_seen_and_blocked(
    collector: Collector, cgroup: Cgroup, workdir: Path, tmp_path: Path, load: Load
) -> None:
    """open, creat, unlink, rename, chmod and truncate through the 32-bit ABI from a 64-bit
    process are decided as the 64-bit calls are: alerted and killed."""
    compat = build_c(tmp_path, "compat", "-static", "-no-pie")
    load(guard_files(workdir, cgroup))
    d = str(workdir)
    cases = [
        (["open", f"{d}/new"], Hook.OPEN, [f"{d}/new"]),
        (["creat", f"{d}/new2"], Hook.CREAT, [f"{d}/new2"]),
        (["unlink", f"{d}/a"], Hook.UNLINK, [f"{d}/a"]),
        (["rename", f"{d}/b", f"{d}/c"], Hook.RENAME, [f"{d}/c", f"{d}/b"]),  # both names
        (["chmod", f"{d}/e"], Hook.CHMOD, [f"{d}/e"]),
        (["truncate", f"{d}/f"], Hook.TRUNCATE, [f"{d}/f"]),
    ]
    for name in "abef":
        (workdir / name).write_text("x")
    got = []
    for argv, _, _ in cases:
        res, recs = collector.run([str(compat), *argv], cgroup)
        files = [r for r in recs if isinstance(r, FileRecord)]
        got.append((res.returncode, [(r.header.hook, r.path, r.header.outcome) for r in files]))
    assert got == [(-9, [(hook, p, "killed") for p in paths]) for _, hook, paths in cases]


# argv: path, form — changes the file through an fd, naming it without its path
FD_FORMS_SCRIPT = """
import ctypes, os, sys
path, form = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDONLY)  # a read-only open is no file operation
if form == "fchmodat2-empty":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(452, fd, b"", 0o755, 0x1000) != 0:  # AT_EMPTY_PATH
        sys.exit(f"fchmodat2: {os.strerror(ctypes.get_errno())}")
elif form == "truncate-proc":
    os.truncate(f"/proc/self/fd/{fd}", 0)
else:
    os.chmod(form.replace("PID", str(os.getpid())).replace("N", str(fd)), 0o755)
print("done")
"""


def test_fd_forms_are_the_file(
    collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    """fchmodat2(fd, "", AT_EMPTY_PATH) and chmod/truncate of /proc/self/fd/N, /dev/fd/N,
    /proc/thread-self/fd/N, /proc/<own pid>/fd/N act on the file the fd has open: decided by
    its path, killed."""
    load(guard_files(workdir, cgroup))
    target = workdir / "guarded"
    target.write_text("x")
    forms = {
        "fchmodat2-empty": Hook.FCHMODAT2, "truncate-proc": Hook.TRUNCATE,
        "/proc/self/fd/N": Hook.CHMOD, "/dev/fd/N": Hook.CHMOD,
        "/proc/thread-self/fd/N": Hook.CHMOD, "/proc/PID/fd/N": Hook.CHMOD,
    }  # fmt: skip
    got = {}
    for form in forms:
        res, recs = collector.run(py(FD_FORMS_SCRIPT, str(target), form), cgroup)
        files = [r for r in recs if isinstance(r, FileRecord)]
        got[form] = (res.returncode, [(r.header.hook, r.path, r.header.outcome) for r in files])
    assert got == {f: (-9, [(hook, str(target), "killed")]) for f, hook in forms.items()}


def test_io_uring_requests_are_seen_and_blocked(
    collector: Collector, cgroup: Cgroup, workdir: Path, tmp_path: Path, load: Load
) -> None:
    """openat, unlinkat, renameat and linkat submitted through io_uring are decided when
    submitted, by the path io_uring copied: alerted and the submitter killed."""
    uring = build_c(tmp_path, "uring")
    load(guard_files(workdir, cgroup))
    d = str(workdir)
    for name in "abe":
        (workdir / name).write_text("x")
    cases = [
        (["open", f"{d}/new"], Hook.IO_URING_OPENAT, [f"{d}/new"]),
        (["unlink", f"{d}/a"], Hook.IO_URING_UNLINKAT, [f"{d}/a"]),
        (["rename", f"{d}/b", f"{d}/c"], Hook.IO_URING_RENAMEAT, [f"{d}/c", f"{d}/b"]),
        (["link", f"{d}/e", f"{d}/g"], Hook.IO_URING_LINKAT, [f"{d}/g", f"{d}/e"]),  # both
    ]
    got = []
    for argv, _, _ in cases:
        res, recs = collector.run([str(uring), *argv], cgroup)
        files = [r for r in recs if isinstance(r, FileRecord)]
        got.append((res.returncode, [(r.header.hook, r.path, r.header.outcome) for r in files]))
    assert got == [(-9, [(hook, p, "killed") for p in paths]) for _, hook, paths in cases]


RENAME = "import os, sys; os.rename(sys.argv[1], sys.argv[2])"

# argv: old, new, form — a hard link of old made as new by path, or through an fd
LINK_SCRIPT = """
import ctypes, os, sys
old, new, form = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
if form == "path":
    os.link(old, new)
else:
    fd = os.open(old, os.O_RDONLY)
    if form == "proc":  # linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, new, AT_SYMLINK_FOLLOW)
        rc = libc.linkat(-100, f"/proc/self/fd/{fd}".encode(), -100, new.encode(), 0x400)
    else:  # linkat(fd, "", AT_FDCWD, new, AT_EMPTY_PATH)
        rc = libc.linkat(fd, b"", -100, new.encode(), 0x1000)
    if rc:
        sys.exit(f"linkat: {os.strerror(ctypes.get_errno())}")
print("linked")
"""


def file_records(recs: list[Record]) -> list[tuple[int, str, list[str], str]]:
    return [
        (r.header.hook, r.path, sorted(r.ops), r.header.outcome)
        for r in recs if isinstance(r, FileRecord)
    ]  # fmt: skip


def test_hard_links_change_the_file_linked(
    collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    """A hard link to a guarded file made into an unguarded directory is a change of the
    guarded file (modifyFile of its name): killed, by path and through an fd. A link made
    through an fd knows the file's mode: an executable linked into a guarded directory is
    createExecutable there."""
    guarded, free = workdir / "g", workdir / "free"
    guarded.mkdir()
    free.mkdir()
    (guarded / "f").write_text("x")
    load(guard_files(guarded, cgroup))
    forms = {"path": Hook.LINK, "proc": Hook.LINKAT, "empty": Hook.LINKAT}
    got = {}
    for form in forms:
        res, recs = collector.run(py(LINK_SCRIPT, f"{guarded}/f", f"{free}/{form}", form), cgroup)
        got[form] = (res.returncode, file_records(recs))
    assert got == {
        form: (-9, [(hook, f"{guarded}/f", ["modifyFile"], "killed")])
        for form, hook in forms.items()
    }
    exe = free / "exe"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    only_create_exe = part_tables(
        "file", {"createExecutable": 1}, [(1, 0, ActionBits.ALERT | ActionBits.BLOCK)],
        recursive_lpm={f"{guarded}/": 1},
    )  # fmt: skip
    load(Bundle(2, {cgroup.id: {"file": 1}}, {"file": only_create_exe}))
    for form in ("proc", "empty"):
        new = f"{guarded}/{form}"
        res, recs = collector.run(py(LINK_SCRIPT, str(exe), new, form), cgroup)
        assert (res.returncode, file_records(recs)) == (
            -9, [(Hook.LINKAT, new, ["createExecutable", "createFile"], "killed")]
        )  # fmt: skip


# argv: path — opens it for writing (the write itself never happens when the open is killed)
WRITE_SCRIPT = """
import os, sys
os.close(os.open(sys.argv[1], os.O_WRONLY))
print("opened")
"""


def test_a_link_made_earlier_is_the_file(
    sensor: KillSensor, collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    """A guarded file hard-linked before the policy (as an image may ship it), then opened
    for writing by the other name: the kernel's cached names of the inode are decided too —
    killed, the record names the guarded path (other_name). When the guarded name is not in
    the dcache (a filesystem mounted again), the names not seen are decided fail-closed:
    killed, the record flagged names_unknown, counted."""
    guarded, free = workdir / "g", workdir / "free"
    guarded.mkdir()
    free.mkdir()
    (guarded / "f").write_text("x")
    os.link(guarded / "f", free / "x")
    load(guard_files(guarded, cgroup))
    (guarded / "f").stat()  # both names cached
    res, recs = collector.run(py(WRITE_SCRIPT, str(free / "x")), cgroup)
    got = [(r.path, r.other_name, r.names_unknown) for r in recs if isinstance(r, FileRecord)]
    assert (res.returncode, got) == (-9, [(f"{guarded}/f", True, False)])
    # unguarded files with two names, both known: nothing
    (free / "y").write_text("y")
    os.link(free / "y", free / "y2")
    res, recs = collector.run(py(WRITE_SCRIPT, str(free / "y")), cgroup)
    assert (res.returncode, recs) == (0, [])

    # a cold dcache: an ext4 image mounted again after the link was made
    image, mnt = workdir / "fs.img", workdir / "mnt"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    (mnt / "g").mkdir()
    (mnt / "g" / "f").write_text("x")
    os.link(mnt / "g" / "f", mnt / "x")
    subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    load(guard_files(mnt / "g", cgroup))
    before = sensor.stats()["names_unknown"]
    res, recs = collector.run(py(WRITE_SCRIPT, str(mnt / "x")), cgroup)
    got = [(r.path, r.other_name, r.names_unknown) for r in recs if isinstance(r, FileRecord)]
    assert (res.returncode, got) == (-9, [(f"{mnt}/x", False, True)])
    assert sensor.stats()["names_unknown"] - before == 1


def test_directory_renames_above_a_guarded_path(
    collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    """Renaming a directory moves every path below it: renaming the guarded directory, a
    directory above it, or another directory into its place is decided as deleteFile/createFile
    of what it moves — killed."""
    w = workdir
    load(guard_files(w / "top" / "guarded", cgroup))
    cases = [  # (old, new, the name that is decided as moving guarded paths)
        (w / "top", w / "moved", w / "top"),
        (w / "top" / "guarded", w / "top" / "g2", w / "top" / "guarded"),
        (w / "evil", w / "top", w / "top"),
    ]
    got = []
    for old, new, _ in cases:
        shutil.rmtree(w / "top", ignore_errors=True)
        shutil.rmtree(w / "moved", ignore_errors=True)
        (w / "top" / "guarded").mkdir(parents=True)
        (w / "top" / "guarded" / "file").write_text("x")
        if old.name == "evil":
            (w / "evil" / "guarded").mkdir(parents=True)
            shutil.rmtree(w / "top")
        res, recs = collector.run(py(RENAME, str(old), str(new)), cgroup)
        files = [r for r in recs if isinstance(r, FileRecord)]
        got.append((res.returncode, [(r.path, r.header.outcome) for r in files]))
    assert got == [(-9, [(str(moving), "killed")]) for _, _, moving in cases]


LOADER = "/lib64/ld-linux-x86-64.so.2"


@pytest.mark.skipif(not Path(LOADER).exists(), reason="no x86-64 glibc loader")
def test_exec_through_the_loader_is_the_program(
    collector: Collector, cgroup: Cgroup, load: Load
) -> None:
    """`ld.so /usr/bin/echo` runs echo's code without an exec of echo: a block on
    /usr/bin/echo (by path, or by name) kills it before that code runs, and the record names
    echo; a program through the loader that nothing blocks runs, its libraries unreported."""
    tables = part_tables(
        "process",
        {"exec": 0b11},
        [
            (0b01, 0, ActionBits.ALERT | ActionBits.BLOCK),
            (0b10, 0, ActionBits.ALERT | ActionBits.BLOCK),
        ],
        exact={"/usr/bin/echo": 0b01},
        any_path=0b10,
        names={"printf": 0b10},
        any_name=0b01,
    )
    load(Bundle(1, {cgroup.id: {"process": 0b11}}, {"process": tables}))
    for program in ("/usr/bin/echo", "/usr/bin/printf"):
        res, recs = collector.run([LOADER, program, "MARKER-NEVER"], cgroup)
        assert "MARKER-NEVER" not in res.stdout and res.returncode == -9
        mapped = [
            r for r in recs if isinstance(r, ProcessRecord) and r.header.hook == Hook.EXEC_MAPPED
        ]
        assert [(r.executable, r.comm, r.header.outcome) for r in mapped] == [
            (program, Path(program).name, "killed")
        ]
        assert mapped[0].args == [LOADER, program, "MARKER-NEVER"]
    res, recs = collector.run([LOADER, "/usr/bin/true"], cgroup)
    assert res.returncode == 0
    assert not [r for r in recs if r.header.hook == Hook.EXEC_MAPPED]


# argv: tiny, "memfd" | "deleted", a directory — runs tiny's bytes from a memfd, or from a
# copy deleted after it was opened
FILELESS_SCRIPT = """
import os, sys
tiny, how, d = sys.argv[1:]
if how == "memfd":
    fd = os.memfd_create("payload")
else:
    fd = os.open(d + "/gone", os.O_RDWR | os.O_CREAT, 0o755)
    os.unlink(d + "/gone")
os.write(fd, open(tiny, "rb").read())
ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)  # no writer left: else ETXTBSY
os.close(fd)
os.execve(ro, ["payload"], {})
"""


def test_fileless_execs_are_recorded_as_such(
    collector: Collector, cgroup: Cgroup, workdir: Path, tiny: Path, load: Load
) -> None:
    """An exec from a memfd or from a deleted file is flagged fileless, with the name it
    has (a memfd's own name, the deleted file's last path)."""
    tables = part_tables("process", {"exec": 1}, [(1, 0, ActionBits.LOG)], any_path=1, any_name=1)
    load(Bundle(1, {cgroup.id: {"process": 1}}, {"process": tables}))
    got = {}
    for how in ("memfd", "deleted"):
        res, recs = collector.run(py(FILELESS_SCRIPT, str(tiny), how, str(workdir)), cgroup)
        assert res.returncode == 0, res.stderr
        execs = [r for r in recs if isinstance(r, ProcessRecord) and r.args == ["payload"]]
        got[how] = [(r.executable, r.executable_fileless) for r in execs]
    assert got == {
        "memfd": [("/memfd:payload", True)],
        "deleted": [(f"{workdir}/gone", True)],
    }


# argv: path — holds a read lease on it until a line arrives on stdin
LEASE_SCRIPT = """
import fcntl, os, signal, sys
signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease break's notice
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
print("leased", flush=True)
sys.stdin.readline()
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
"""

# argv: real, decoy (as long) — truncate(real) while another thread writes decoy over the
# string; truncate waits for the lease on real to be given up, so the change lands mid-call
SWAP_SCRIPT = """
import ctypes, sys, threading, time
real, decoy = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(real.encode())
def swap():
    time.sleep(0.3)  # truncate is waiting in break_lease by now
    ctypes.memmove(buf, decoy.encode(), len(decoy))
    print("swapped", flush=True)
threading.Thread(target=swap).start()
print("truncated", libc.truncate(buf, 0), flush=True)
"""


def test_a_path_string_changed_mid_call_is_decided_both_ways(
    sensor: KillSensor, collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    """Another thread writes an unguarded path over the string of a truncate of a guarded
    file while the call runs (made deterministic with a file lease that holds truncate): the
    string saved at sys_enter is decided (the guarded file: killed), the change is flagged
    path_swapped and counted. (Before: the string read at sys_exit was decided — the decoy —
    and the guarded file was truncated without a record.)"""
    real, decoy = workdir / "g" / "f", workdir / "d" / "f"
    for f in (real, decoy):
        f.parent.mkdir()
        f.write_text("data")
    load(guard_files(real.parent, cgroup))
    before = sensor.stats()["path_swapped"]
    holder = subprocess.Popen(
        py(LEASE_SCRIPT, str(real)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout and holder.stdin and holder.stdout.readline() == "leased\n"
    collector.drain()
    child = subprocess.Popen(
        py(SWAP_SCRIPT, str(real), str(decoy)),
        preexec_fn=cgroup.join(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout and child.stdout.readline() == "swapped\n"
    holder.stdin.write("release\n")
    holder.stdin.flush()
    assert holder.wait(10) == 0
    out = child.stdout.read()
    assert child.wait(10) == -9, out  # killed before "truncated"
    recs = collector.drain()
    got = [(r.path, r.path_swapped, r.header.outcome) for r in recs if isinstance(r, FileRecord)]
    assert got == [(str(real), True, "killed")]
    assert sensor.stats()["path_swapped"] - before == 1
    assert real.read_text() == "" and decoy.read_text() == "data"  # kill mode: after the fact


# argv: path — a write-open of it (it waits while another process holds a lease on it)
OPEN_SCRIPT = """
import os, sys
os.open(sys.argv[1], os.O_WRONLY)
print("opened", flush=True)
"""


def test_masks_changed_during_a_write_open_decide_it(
    sensor: KillSensor, collector: Collector, cgroup: Cgroup, workdir: Path, load: Load
) -> None:
    """A container's masks changed (KillSensor.set_cgroup) while its write-open runs (held in
    break_lease by a file lease) decide that open: the sys_exit reuses the masks its
    sys_enter found only while stk_control.seq is unchanged. The open starts with a selector
    that can't match; the masks gain the one guarding the file meanwhile: killed, recorded.
    (With the entry's masks reused regardless: no record, the open done.)"""
    f = workdir / "g" / "f"
    f.parent.mkdir()
    f.write_text("data")
    tables = part_tables(
        "file",
        {"modifyFile": 0b11},
        [(0b10, 0, ActionBits.ALERT | ActionBits.BLOCK)],
        recursive_lpm={"/nonexistent/": 0b01, f"{f.parent}/": 0b10},
    )
    load(Bundle(1, {cgroup.id: {"file": 0b01}}, {"file": tables}))
    holder = subprocess.Popen(
        py(LEASE_SCRIPT, str(f)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout and holder.stdin and holder.stdout.readline() == "leased\n"
    collector.drain()
    child = subprocess.Popen(
        py(OPEN_SCRIPT, str(f)), preexec_fn=cgroup.join(), stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.5)  # the open is waiting in break_lease by now (past its sys_enter)
    sensor.set_cgroup(sensor.active_slot, cgroup.id, {"file": 0b11})
    holder.stdin.write("release\n")
    holder.stdin.flush()
    assert holder.wait(10) == 0
    assert child.stdout is not None
    assert child.wait(10) == -9, child.stdout.read()  # killed before "opened"
    recs = collector.drain()
    got = [(r.path, r.header.outcome) for r in recs if isinstance(r, FileRecord)]
    assert got == [(str(f), "killed")]


# argv: how, old, new — gives old the name new (by path), then waits to be killed
MOVE_SCRIPT = """
import os, sys, time
how, old, new = sys.argv[1:]
(os.rename if how == "rename" else os.link)(old, new)
print("moved", flush=True)
time.sleep(30)
"""


def test_executables_moved_into_a_guarded_directory_are_settled_in_user_space(
    harness: Harness, cgroup: Cgroup, workdir: Path
) -> None:
    """An executable renamed or hard-linked by path into a directory that blocks
    createExecutable: the syscall tracepoint can't read the file's mode, so the kernel writes
    a `pending` record, and the sensor's user space reads the mode through the process's root
    and kills the process (after the fact). A file without an x bit moved there: nothing."""
    w = workdir
    (w / "bin").mkdir()
    for name, mode in (("exe", 0o755), ("exe2", 0o700), ("plain", 0o644)):
        (w / name).write_text("#!/bin/sh\n")
        (w / name).chmod(mode)
    harness.apply([{
        "apiVersion": "stockade.dev/v1alpha1", "kind": "ContainerPolicy",
        "metadata": {"name": "bin-guard", "namespace": "shop"},
        "spec": {"file": {
            "selectors": [{"name": "binExe", "operation": ["createExecutable"],
                           "targetFilePath": [f"{w}/bin/**"]}],
            "responses": [{"match": ["binExe"], "actions": ["alert", "block"]}],
        }},
    }], {cgroup: WEB})  # fmt: skip
    assert harness.sa is not None
    got = {}
    for how, name in (("rename", "exe"), ("link", "exe2"), ("rename", "plain")):
        harness.docs()
        child = subprocess.Popen(
            py(MOVE_SCRIPT, how, str(w / name), str(w / "bin" / name)),
            preexec_fn=cgroup.join(), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout and child.stdout.readline() == "moved\n"
        deadline = time.monotonic() + 3
        while child.poll() is None and time.monotonic() < deadline:
            harness.sa.pump(100)
        child.kill()
        docs = harness.docs()
        got[name] = (
            child.wait(),
            [(d["file"]["path"], d["cloud_defend"]["file_operations"], d["cloud_defend"]["outcome"])
             for d in docs if d["event"]["category"] == ["file"]],
        )  # fmt: skip
    assert got == {
        "exe": (-9, [(f"{w}/bin/exe", ["createExecutable"], "killed")]),
        "exe2": (-9, [(f"{w}/bin/exe2", ["createExecutable"], "killed")]),
        "plain": (-9, []),  # killed by the test, after 3 s of nothing
    }
    counts = harness.sa.counts
    assert (counts["pending_executable"], counts["pending_not_executable"]) == (2, 1)
