"""stockade/sensor/abi.py and bpf/lib/abi.h agree: every enum value, struct size and member
offset, read from the BTF of the built objects of both architectures (the host's from
bpf/.build, the other compiled here: it can't be loaded, but its layouts must be the same)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.policy.model import FileOperation, ProcessOperation
from stockade.sensor import abi
from stockade.sensor.abi import Hook
from stockade.sensor.libbpf import Btf
from stockade.sensor.paths import BPF_ARCH, bpf_build_dir
from stockade.sensor.records import CgroupRecord, decode

REPO = Path(__file__).resolve().parents[2]
OTHER_ARCH = "arm64" if BPF_ARCH == "x86" else "x86"
OBJECTS = ("stockade.bpf.o", "stockade_lsm.bpf.o", "stockade_fmodret.bpf.o", "probe.bpf.o")


def build(arch: str, out: Path) -> None:
    """bpf/build for `arch` into `out` (skips when clang is missing)."""
    if not shutil.which("clang"):
        pytest.skip("clang is not installed (bpf/install-deps)")
    subprocess.run(
        [str(REPO / "bpf" / "build"), "--arch", arch, "--out", str(out)],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def other_arch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"bpf-{OTHER_ARCH}")
    build(OTHER_ARCH, out)
    return out


@pytest.fixture(params=[(a, o) for a in ("host", "other") for o in OBJECTS], ids=str)
def btf(request: pytest.FixtureRequest) -> Iterator[Btf]:
    which, name = request.param
    if which == "host":
        path = bpf_build_dir() / name
        if not path.exists():
            pytest.skip(f"{path} is not built (run bpf/build)")
    else:
        path = request.getfixturevalue("other_arch_dir") / name
    with Btf(path) as b:
        yield b


def test_every_enum_matches(btf: Btf) -> None:
    for py, (c_name, prefix) in abi.C_ENUMS.items():
        c = btf.enum(c_name)
        count = c.pop(prefix + "COUNT", None)  # a loop bound or a map size, not a member
        assert c == {prefix + name: int(m) for name, m in py.__members__.items()}, c_name
        if count is not None:
            assert count >= len(py), c_name
    assert btf.enum("stk_op")["STK_OP_COUNT"] == len(abi.Op)


def test_every_layout_matches(btf: Btf) -> None:
    for layout in abi.LAYOUTS:
        size, offsets = btf.struct(layout.c_name)
        assert (layout.size, layout.offsets()) == (size, offsets), layout.c_name


def test_operations_are_the_policy_languages() -> None:
    assert set(abi.OPERATIONS) == {*ProcessOperation, *FileOperation}


def test_hook_points_are_written_as_defend_for_containers_writes_them() -> None:
    """`cloud_defend.hook_point` values from the seed's field list, so queries and detection
    rules written for Defend for Containers match."""
    assert Hook.FORK.hook_point == "tracepoint__sched_process_fork"
    assert Hook.EXEC.hook_point == "tracepoint__sched_process_exec"
    assert [
        h.hook_point for h in (Hook.LSM_PATH_CHMOD, Hook.LSM_FILE_OPEN, Hook.LSM_PATH_UNLINK)
    ] == [
        "lsm__path_chmod",
        "lsm__file_open",
        "lsm__path_unlink",
    ]
    # fmodret mode's: the security_* function, as the kind of program it is
    assert [h.hook_point for h in (Hook.FMODRET_BPRM_CHECK, Hook.FMODRET_PATH_UNLINK)] == [
        "fmod_ret__security_bprm_check",
        "fmod_ret__security_path_unlink",
    ]


def test_a_cgroup_record_decodes_from_its_layout() -> None:
    """Kind CGROUP is read with abi.CGROUP_REC (32 bytes + path), not the 192-byte header."""
    path = b"/kubepods.slice/kubepods-besteffort.slice"
    raw = abi.CGROUP_REC.pack_fields(
        version=abi.Const.RECORD_VERSION, kind=abi.RecordKind.CGROUP, created=1,
        path_truncated=1, path_len=len(path), level=2, ktime_ns=7, cgroup_id=4242,
    ) + path  # fmt: skip
    assert abi.CGROUP_REC.size == 32
    assert decode(raw) == CgroupRecord(
        created=True, cgroup_id=4242, level=2, path=path.decode(), path_truncated=True,
        ktime_ns=7,
    )  # fmt: skip
    with pytest.raises(ValueError, match="record version 1, want"):
        decode(abi.CGROUP_REC.pack_fields(version=1, kind=abi.RecordKind.CGROUP))
