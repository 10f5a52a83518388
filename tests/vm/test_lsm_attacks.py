"""lsm and fmodret modes against the attacks of issue 15 that kill mode sees since
(docs/kernel.md, "Attacks"): the 32-bit ABI, io_uring, paths that name an open file, renames
away by the old name and of the guarded directory — each denied with EPERM before it happens,
with a `denied` record."""

from __future__ import annotations

import json
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from ..kernel.conftest import Cgroup
from ..kernel.scenario import PY, Harness
from ..kernel.test_attacks import PROGS
from ..kernel.test_standalone import WEB
from .test_lsm import EPERM, file_block_policy, hook_point, tree

pytestmark = pytest.mark.vm

# argv: workdir, compat, uring — tries each attack, prints [name, errno or 0] per line
ATTACKS = textwrap.dedent(
    """
    import json, os, subprocess, sys
    w, compat, uring = sys.argv[1:]
    e = w + "/etc"
    def attempt(name, fn):
        try:
            fn()
            err = 0
        except OSError as exc:
            err = exc.errno
        print(json.dumps([name, err]), flush=True)
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
