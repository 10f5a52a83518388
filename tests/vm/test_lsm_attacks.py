"""lsm and fmodret modes against the attacks of issue 15 that kill mode sees since
(docs/kernel.md, "Attacks"): the 32-bit ABI, io_uring, paths that name an open file, renames
away by the old name and of the guarded directory — each denied with EPERM before it happens,
with a `denied` record."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from ..kernel.conftest import Cgroup
from ..kernel.scenario import PY, Harness
from ..kernel.test_attacks import PROGS
from ..kernel.test_standalone import BLOCKING, WEB
from .test_lsm import ATTEMPT, EPERM, file_block_policy, hook_point, tree

pytestmark = pytest.mark.vm

# argv: workdir, compat, uring — tries each attack, prints [name, errno or 0] per line
ATTACKS = ATTEMPT + textwrap.dedent(
    """
    w, compat, uring = sys.argv[1:]
    e = w + "/etc"
    def run(*argv):  # the attack programs exit with the errno
        rc = subprocess.run(argv, stderr=subprocess.DEVNULL).returncode
        if rc:
            raise OSError(rc, argv[1])
    fd = os.open(e + "/existing", os.O_RDONLY)
    attempt("compat_open", lambda: run(compat, "open", e + "/new"))
    attempt("compat_chmod", lambda: run(compat, "chmod", e + "/existing"))
    attempt("compat_rename_away", lambda: run(compat, "rename", e + "/existing", w + "/away"))
    attempt("uring_open", lambda: run(uring, "open", e + "/new2"))
    attempt("uring_unlink", lambda: run(uring, "unlink", e + "/existing"))
    attempt("chmod_proc_fd", lambda: os.chmod(f"/proc/self/fd/{fd}", 0o755))
    attempt("truncate_proc_fd", lambda: os.truncate(f"/proc/thread-self/fd/{fd}", 0))
    attempt("rename_dir", lambda: os.rename(e, w + "/moved"))
    """
)


def test_attacks_are_denied(
    harness: Harness, cgroup: Cgroup, workdir: Path, tmp_path: Path
) -> None:
    progs = {}
    for name, flags in (("compat", ["-static", "-no-pie"]), ("uring", [])):
        progs[name] = tmp_path / name
        subprocess.run(
            ["gcc", "-O2", *flags, "-o", str(progs[name]), str(PROGS / f"{name}.c")], check=True
        )
    tree(workdir)
    harness.apply([file_block_policy(workdir)], {cgroup: WEB})
    argv = [PY, "-S", "-B", "-c", ATTACKS, str(workdir), str(progs["compat"]), str(progs["uring"])]
    res, docs = harness.run(argv, cgroup)
    assert res.returncode == 0, res.stderr  # never killed
    results = dict(json.loads(line) for line in res.stdout.splitlines())
    assert results == dict.fromkeys(results, EPERM) and len(results) == 8, results
    e = workdir / "etc"
    assert sorted(p.name for p in e.iterdir()) == ["existing"]
    assert (e / "existing").read_text() == "data\n"
    assert stat.S_IMODE((e / "existing").stat().st_mode) == 0o644
    assert [(d["file"]["path"], d["cloud_defend"]["hook_point"]) for d in docs] == [
        (path, hook_point(harness, hook)) for path, hook in (
            (f"{e}/new", "path_mknod"),
            (f"{e}/existing", "path_chmod"),
            (f"{e}/existing", "path_rename"),  # the old name: gone
            (f"{e}/new2", "path_mknod"),
            (f"{e}/existing", "path_unlink"),
            (f"{e}/existing", "path_chmod"),
            (f"{e}/existing", "path_truncate"),
            (str(e), "path_rename"),  # the guarded directory: its paths would move
        )
    ]  # fmt: skip
    assert all(d["cloud_defend"]["outcome"] == "denied" for d in docs)


# argv: workdir — the hard-link and new-executable attacks, [name, errno or 0] per line
LINKS = ATTEMPT + textwrap.dedent(
    """
    w = sys.argv[1]
    e = w + "/etc"
    attempt("link_out", lambda: os.link(e + "/existing", w + "/link"))
    attempt("write_early_link", lambda: os.close(os.open(w + "/early", os.O_WRONLY)))
    attempt("write_many_links", lambda: os.close(os.open(w + "/many0", os.O_WRONLY)))
    attempt("rename_exe_in", lambda: os.rename(w + "/exe", w + "/bin/exe"))
    attempt("link_exe_in", lambda: os.link(w + "/exe2", w + "/bin/exe2"))
    """
)


def test_hard_links_and_new_executables_are_denied(
    harness: Harness, cgroup: Cgroup, workdir: Path
) -> None:
    """A hard link of a guarded file out of its directory (path_link's old name: modifyFile),
    a write through a link made before the policy (the guarded name is another alias of the
    inode: other_name), a write to a file with more names than are decided (fail closed:
    names_unknown), and an executable renamed or linked into a guarded bin directory
    (createExecutable: the hook knows the mode) — each EPERM, nothing changed."""
    w = workdir
    tree(w)
    (w / "etc" / "second").write_text("data\n")
    os.link(w / "etc" / "existing", w / "early")  # made before the policy, as in an image
    for i in range(10):  # more names than the 8 decided
        os.link(w / "etc" / "second", w / f"many{i}")
    (w / "bin").mkdir()
    for exe in ("exe", "exe2"):
        (w / exe).write_text("#!/bin/sh\n")
        (w / exe).chmod(0o755)
    policy = file_block_policy(w)
    policy["spec"]["file"]["selectors"].append(
        {"name": "binExe", "targetFilePath": [f"{w}/bin/**"], "operation": ["createExecutable"]}
    )
    policy["spec"]["file"]["responses"][0]["match"].append("binExe")
    harness.apply([policy], {cgroup: WEB})
    res, docs = harness.run([PY, "-S", "-B", "-c", LINKS, str(w)], cgroup)
    assert res.returncode == 0, res.stderr
    results = dict(json.loads(line) for line in res.stdout.splitlines())
    assert results == dict.fromkeys(results, EPERM) and len(results) == 5, results
    assert not (w / "link").exists() and sorted(os.listdir(w / "bin")) == []
    got = [
        (d["file"]["path"], d["cloud_defend"]["hook_point"], d["cloud_defend"]["file_operations"],
         d["cloud_defend"].get("other_name", False), d["cloud_defend"].get("names_unknown", False))
        for d in docs
    ]  # fmt: skip
    modify = ["modifyFile"]
    assert got == [
        (f"{w}/etc/existing", hook_point(harness, "path_link"), modify, False, False),
        (f"{w}/etc/existing", hook_point(harness, "file_open"), modify, True, False),
        (f"{w}/many0", hook_point(harness, "file_open"), modify, False, True),
        (f"{w}/bin/exe", hook_point(harness, "path_rename"),
         ["createExecutable", "createFile", "deleteFile", "modifyFile"], False, False),
        (f"{w}/bin/exe2", hook_point(harness, "path_link"),
         ["createExecutable", "createFile"], False, False),
    ]  # fmt: skip
    assert all(d["cloud_defend"]["outcome"] == "denied" for d in docs)


LOADER = "/lib64/ld-linux-x86-64.so.2"


@pytest.mark.skipif(not Path(LOADER).exists(), reason="no x86-64 glibc loader")
def test_exec_through_the_loader_is_denied(harness: Harness, cgroup: Cgroup) -> None:
    """`ld.so /usr/bin/echo` maps echo's code without an exec of echo: mmap_file decides the
    mapping as echo's exec, and a block on it denies the mapping (the loader fails, echo's
    code never runs); a program through the loader that nothing blocks runs."""
    harness.apply([BLOCKING], {cgroup: WEB})
    res, docs = harness.run([LOADER, "/usr/bin/echo", "MARKER-NEVER"], cgroup)
    assert "MARKER-NEVER" not in res.stdout and res.returncode == 127, res.stderr
    assert "failed to map segment" in res.stderr  # the loader's mmap: EPERM
    mapped = [
        d for d in docs if d["cloud_defend"]["hook_point"] == hook_point(harness, "mmap_file")
    ]
    assert [(d["process"]["executable"], d["process"]["name"], d["cloud_defend"]["outcome"])
            for d in mapped] == [("/usr/bin/echo", "echo", "denied")]  # fmt: skip
    res, docs = harness.run([LOADER, "/usr/bin/true"], cgroup)
    assert res.returncode == 0 and docs == [], docs
