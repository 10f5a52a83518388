"""Fixtures for the image tests: `make images` builds the images (cached base, cached
layers), and `Oci` runs one without a container engine's cgroups.

An image runs as crun runs a pod's container, from an OCI runtime spec written here (the
privileges the chart gives it), with `--cgroup-manager=disabled` in a private mount
namespace: no cgroup is created or joined, so the machine's cgroup v1 groups stay as they
are (`podman run` would make its own). Skipped, saying what is missing, without root,
buildah, podman, crun or mmdebstrap (images/install-deps installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("buildah", "podman", "crun", "mmdebstrap", "unshare")
CGROUP2 = Path("/sys/fs/cgroup/unified")


def _mount(kind: str, destination: str, *options: str) -> dict[str, object]:
    return {"destination": destination, "type": kind, "source": kind, "options": list(options)}


# what a container runtime gives every container
POD_MOUNTS = [
    _mount("proc", "/proc"),
    _mount("tmpfs", "/dev", "nosuid", "strictatime", "mode=755", "size=65536k"),
    _mount("tmpfs", "/tmp", "nosuid", "nodev", "size=65536k"),
    _mount("sysfs", "/sys", "nosuid", "noexec", "nodev", "ro"),
]


def _store() -> list[str]:
    """images/lib.sh's store options, as the shell sees them."""
    out = subprocess.run(
        ["bash", "-c", '. images/lib.sh; printf "%s\\n" "${STORE_OPTS[@]}"'],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.split("\n")[:-1]


def _lib(name: str) -> str:
    out = subprocess.run(
        ["bash", "-c", f'. images/lib.sh; printf "%s" "${name}"'],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout


@dataclass(frozen=True)
class Images:
    version: str
    operator: str
    sensor: str
    store: list[str] = field(default_factory=list)

    def podman(self, *args: str) -> str:
        return subprocess.run(
            ["podman", *self.store, *args], capture_output=True, text=True, check=True
        ).stdout

    def label(self, image: str, name: str) -> str:
        labels: dict[str, str] = json.loads(self.podman("image", "inspect", image))[0]["Labels"]
        return labels[name]


@pytest.fixture(scope="session")
def images() -> Images:
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (images/install-deps)")
    if os.geteuid() != 0:
        pytest.skip("needs root: buildah builds and crun runs the images as root")
    res = subprocess.run([REPO / "images" / "build"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    version, registry = _lib("VERSION"), _lib("REGISTRY")
    return Images(
        version,
        f"{registry}/stockade-operator:{version}",
        f"{registry}/stockade-sensor:{version}",
        _store(),
    )


@dataclass
class Oci:
    """One image's root filesystem (mounted from the store) and the spec crun runs it with."""

    images: Images
    image: str
    bundle: Path
    rootfs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.rootfs = Path(self.images.podman("image", "mount", self.image).strip())

    def spec(
        self,
        args: Sequence[str],
        *,
        user: tuple[int, int] | None = None,
        capabilities: Sequence[str] = (),
        mounts: Sequence[tuple[str, str, bool]] = (),
        host_pid: bool = False,
        read_only: bool = False,
    ) -> dict[str, object]:
        """A pod's container as the kubelet would ask for it: the image's user and
        environment, only `capabilities`, no new privileges, host paths bound (host, container,
        read-only), hostPID when `host_pid`."""
        config = json.loads(self.images.podman("image", "inspect", self.image))[0]["Config"]
        if user is None:
            uid, _, gid = (config.get("User") or "0:0").partition(":")
            user = (int(uid), int(gid or uid))
        caps = [f"CAP_{c}" for c in capabilities]
        namespaces = ["network", "ipc", "uts", "mount", *([] if host_pid else ["pid"])]
        binds = [
            {"destination": dst, "type": "bind", "source": src,
             "options": ["rbind", "ro" if ro else "rw"]}
            for src, dst, ro in mounts
        ]  # fmt: skip
        return {
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": user[0], "gid": user[1]},
                "args": list(args),
                "env": config.get("Env", []),
                "cwd": "/",
                "noNewPrivileges": True,
                "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            },
            "root": {"path": str(self.rootfs), "readonly": read_only},
            "hostname": "stockade-test",
            "mounts": [*POD_MOUNTS, *binds],
            "linux": {"namespaces": [{"type": t} for t in namespaces]},
        }

    def popen(
        self, spec: dict[str, object], stdout: int | None = None, stderr: int | None = None
    ) -> subprocess.Popen[str]:
        """crun runs `spec` in a private mount namespace, creating no cgroup.

        crun refuses this machine's hybrid layout (v1 controllers, v2 at
        /sys/fs/cgroup/unified) even when it manages no cgroup, so in that namespace alone the
        v2 hierarchy moves aside (to the bundle's cgroup2/) and binds from it follow."""
        aside = self.bundle / "cgroup2"
        aside.mkdir(exist_ok=True)
        for m in spec["mounts"]:  # type: ignore[attr-defined]
            if m["source"] == str(CGROUP2):
                m["source"] = str(aside)
        (self.bundle / "config.json").write_text(json.dumps(spec))
        name = f"stockade-test-{uuid.uuid4().hex[:8]}"
        move_aside = 'mount --bind "$1" "$2" && umount --lazy "$1" && shift 2 && exec "$@"'
        return subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", move_aside, "sh",
             str(CGROUP2), str(aside),
             "crun", "--cgroup-manager=disabled", "run", "--bundle", str(self.bundle), name],
            text=True, stdout=stdout, stderr=stderr,
        )  # fmt: skip

    def run(self, spec: dict[str, object], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = self.popen(spec, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


MakeOci = Callable[[str], Oci]


@pytest.fixture
def oci(images: Images, tmp_path: Path) -> Iterator[MakeOci]:
    """oci(image) → an `Oci` for it; the images are unmounted after the test."""
    made: list[Oci] = []

    def make(image: str) -> Oci:
        bundle = tmp_path / f"bundle{len(made)}"
        bundle.mkdir()
        made.append(Oci(images, image, bundle))
        return made[-1]

    yield make
    for o in made:
        subprocess.run(["podman", *images.store, "image", "unmount", o.image],
                       capture_output=True, check=False)  # fmt: skip
