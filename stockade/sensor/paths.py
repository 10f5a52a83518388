"""Where the compiled BPF objects live, and the pseudo-filesystems they need."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

__all__ = ["BPF_ARCH", "bpf_build_dir", "ensure_fs", "object_path"]

# bpf/build's name for this machine's architecture (the objects are built per architecture)
BPF_ARCH = {"x86_64": "x86", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
# a wheel ships the objects of every architecture as package data (Dockerfile.sensor)
_PACKAGED = Path(__file__).resolve().parent / "bpf"
_REPO_BUILD = Path(__file__).resolve().parents[2] / "bpf" / ".build"


def bpf_build_dir() -> Path:
    """$STOCKADE_BPF_DIR; else the objects installed with the package
    (stockade/sensor/bpf/<arch>/); else a checkout's bpf/.build."""
    env = os.environ.get("STOCKADE_BPF_DIR")
    if env:
        return Path(env)
    packaged = _PACKAGED / BPF_ARCH
    return packaged if packaged.is_dir() else _REPO_BUILD


def object_path(name: str) -> Path:
    """Path of a compiled object such as 'stockade.bpf.o'."""
    return bpf_build_dir() / name


def _mounted(target: str) -> bool:
    with open("/proc/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == target for line in f)


def ensure_fs() -> list[str]:
    """Mount tracefs, securityfs and bpffs where missing (root); returns what was mounted."""
    done: list[str] = []
    for fstype, target in (
        ("tracefs", "/sys/kernel/tracing"),
        ("securityfs", "/sys/kernel/security"),
        ("bpf", "/sys/fs/bpf"),
    ):
        if Path(target).is_dir() and not _mounted(target):
            res = subprocess.run(
                ["mount", "-t", fstype, fstype, target], capture_output=True, check=False
            )
            if res.returncode == 0:
                done.append(target)
    return done
