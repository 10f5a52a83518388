"""The sensor installed as a wheel, outside the repository, finds its BPF objects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stockade.sensor.paths import BPF_ARCH

REPO = Path(__file__).resolve().parents[2]
OBJECTS = ("stockade.bpf.o", "stockade_lsm.bpf.o", "stockade_fmodret.bpf.o", "probe.bpf.o")

# run in the fresh venv: where each object is found, after libbpf opened it
FIND = """
from stockade.sensor.libbpf import BpfObject
from stockade.sensor.paths import object_path
for name in {names!r}:
    path = object_path(name)
    BpfObject(path).close()
    print(path)
"""


def test_the_wheel_ships_and_finds_its_objects(tmp_path: Path) -> None:
    if not shutil.which("clang"):
        pytest.skip("clang is not installed (bpf/install-deps)")
    # a copy of what a wheel is built from, with the objects staged as Dockerfile.sensor does
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "stockade", src / "stockade", ignore=shutil.ignore_patterns("__pycache__", "bpf")
    )
    for arch in ("x86", "arm64"):
        out = src / "stockade" / "sensor" / "bpf" / arch
        subprocess.run(
            [REPO / "bpf" / "build", "--arch", arch, "--out", out], check=True, capture_output=True
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("stockade-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    subprocess.run(
        [*pip, "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("STOCKADE_BPF_DIR", "PYTHONPATH")}
    found = subprocess.run(
        [venv / "bin" / "python", "-c", FIND.format(names=OBJECTS)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout.split()
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert found == [str(site / "stockade" / "sensor" / "bpf" / BPF_ARCH / n) for n in OBJECTS]
