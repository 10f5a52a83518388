"""lsm and fmodret modes in CI: boots the test VM (`e2e/vm/run`, qemu, ~70 s under TCG) and
runs tests/vm there, once with bpf in the kernel's lsm= (lsm mode) and once without it
(fmodret mode); this machine's kernel refuses BPF LSM and fmod_ret programs (lockdown). One
lsm boot also runs e2e/vm, the end-to-end scenarios in lsm mode."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]


# Two verifiers and two sets of LSM hooks: bookworm's default kernel (6.1) and its 6.12
# (6.2+ added security_file_truncate, which lsm mode must hook). The 6.12 package is pinned:
# when Debian's mirror drops it, move the pin to the newest linux-image-6.12.*-unsigned.
KERNELS = {"6.1": "", "6.12": "linux-image-6.12.107+deb12-amd64-unsigned"}
# the boot's lsm= and which tests/vm modes run there: Debian's list (bpf: lsm mode; fmodret
# is tested where it is needed) and Ubuntu's (no bpf: the probe picks fmodret, lsm skips)
BOOTS = {
    "lsm": ["--lsm", "lockdown,capability,landlock,yama,apparmor,bpf", "-k", "not fmodret"],
    "fmodret": ["--lsm", "landlock,lockdown,yama,integrity,apparmor"],
}
# the e2e scenarios' lsm part (drift, audit, scope with the standalone sensor) rides on one
# boot rather than a VM of its own
E2E_BOOT = ("6.1", "lsm")


@pytest.mark.skipif(os.environ.get("STOCKADE_SKIP_VM") == "1", reason="STOCKADE_SKIP_VM=1")
@pytest.mark.parametrize("mode", BOOTS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_deny_modes_in_vm(kernel: str, mode: str) -> None:
    if not shutil.which("qemu-system-x86_64") and not shutil.which("apt-get"):
        pytest.skip("no qemu-system-x86_64 and no apt-get to install it")
    env = dict(os.environ)
    if KERNELS[kernel]:
        env["STOCKADE_VM_KERNEL"] = KERNELS[kernel]
    lsm, select = BOOTS[mode][:2], BOOTS[mode][2:]
    pytest_argv = [".venv/bin/python", "-m", "pytest", "tests/vm", "-q", "-p", "no:cacheprovider"]
    if (kernel, mode) == E2E_BOOT:
        pytest_argv.append("e2e/vm")
    res = subprocess.run(
        [str(REPO / "e2e" / "vm" / "run"), "--timeout", "600", "--quiet", *lsm, "--",
         *pytest_argv, *select],
        capture_output=True, text=True, check=False, timeout=900, env=env,
    )  # fmt: skip
    tail = "\n".join((res.stdout + res.stderr).splitlines()[-40:])
    assert res.returncode == 0, tail
    assert " passed" in res.stdout and " failed" not in res.stdout, tail
