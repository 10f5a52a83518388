"""The cgroup names kubelets and CRI runtimes write, and the look-alikes the sensor refuses."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.sensor import abi
from stockade.sensor.cgroups import (
    CgroupScanError,
    KubeCgroup,
    parse,
    pod_cgroup_names,
    scan,
    v2_root,
)

UID = "0f5b2c9e-1d2a-4b3c-8d4e-5f6a7b8c9d0e"
ESC = UID.replace("-", "_")  # as the systemd driver writes it in a slice name
STATIC_UID = "6c1e3b0f9a2d4e5f8a7b6c5d4e3f2a1b"  # a static pod's: the md5 hex of its manifest
CID = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899"


def pod(qos: str, uid: str = UID) -> KubeCgroup:
    return KubeCgroup(uid, None, None, qos)


def ctr(qos: str, runtime: str | None, uid: str = UID) -> KubeCgroup:
    return KubeCgroup(uid, CID, runtime, qos)


SYSTEMD_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ESC}.slice"

# What real nodes show (docs/containers.md has the sources).
LAYOUTS = [
    # cgroupfs driver: containerd and Docker name the container by its bare id.
    (f"/kubepods/pod{UID}", pod("Guaranteed")),
    (f"/kubepods/pod{UID}/{CID}", ctr("Guaranteed", None)),
    (f"/kubepods/burstable/pod{UID}", pod("Burstable")),
    (f"/kubepods/burstable/pod{UID}/{CID}", ctr("Burstable", None)),
    (f"/kubepods/besteffort/pod{UID}/{CID}", ctr("BestEffort", None)),
    # cgroupfs driver, CRI-O: crio-<id>, no .scope.
    (f"/kubepods/besteffort/pod{UID}/crio-{CID}", ctr("BestEffort", "cri-o")),
    # systemd driver: containerd, CRI-O, Docker (cri-dockerd) scopes, the three QoS classes.
    (SYSTEMD_POD, pod("Burstable")),
    (f"{SYSTEMD_POD}/cri-containerd-{CID}.scope", ctr("Burstable", "containerd")),
    (f"{SYSTEMD_POD}/crio-{CID}.scope", ctr("Burstable", "cri-o")),
    (f"{SYSTEMD_POD}/docker-{CID}.scope", ctr("Burstable", "docker")),
    (f"/kubepods.slice/kubepods-pod{ESC}.slice", pod("Guaranteed")),
    (f"/kubepods.slice/kubepods-pod{ESC}.slice/crio-{CID}.scope", ctr("Guaranteed", "cri-o")),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{ESC}.slice"
        f"/cri-containerd-{CID}.scope",
        ctr("BestEffort", "containerd"),
    ),
    # kubelet --cgroup-root: kind's /kubelet with the systemd driver, and with cgroupfs.
    (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice"
        f"/kubelet-kubepods-burstable-pod{ESC}.slice/cri-containerd-{CID}.scope",
        ctr("Burstable", "containerd"),
    ),
    (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{ESC}.slice",
        pod("Guaranteed"),
    ),
    (f"/kubelet/kubepods/burstable/pod{UID}/{CID}", ctr("Burstable", None)),
    (f"/a/b-c/kubepods/pod{UID}", pod("Guaranteed")),
    # A static pod (kube-apiserver, etcd): the UID is the manifest's md5, no dashes.
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice"
        f"/cri-containerd-{CID}.scope",
        ctr("Burstable", "containerd", STATIC_UID),
    ),
    (f"/kubepods/burstable/pod{STATIC_UID}", pod("Burstable", STATIC_UID)),
]


@pytest.mark.parametrize(("path", "expected"), LAYOUTS, ids=[p for p, _ in LAYOUTS])
def test_layouts(path: str, expected: KubeCgroup) -> None:
    assert parse(path) == expected


LOOK_ALIKES = [
    # Not pods: the tree's own levels, system cgroups, conmon, a container's own children.
    "/",
    "/kubepods",
    "/kubepods/burstable",
    "/kubepods.slice",
    "/kubepods.slice/kubepods-besteffort.slice",
    "/system.slice/containerd.service",
    "/system.slice/docker.service",
    "/init.scope",
    f"/system.slice/cri-containerd-{CID}.scope",  # a scope not under a pod slice
    f"/kubepods.slice/crio-{CID}.scope",
    f"/kubepods.slice/kubepods-burstable.slice/cri-containerd-{CID}.scope",
    f"{SYSTEMD_POD}/crio-conmon-{CID}.scope",
    f"/kubepods/burstable/pod{UID}/crio-conmon-{CID}",
    f"{SYSTEMD_POD}/crio-{CID}.scope/container",  # crun's sub-cgroup: the ancestor covers it
    f"/kubepods/pod{UID}/{CID}/child",
    # A kubepods tree a container built inside its own cgroup is not another pod.
    f"/kubepods/pod{UID}/{CID}/kubepods/pod{UID}/{CID}",
    f"{SYSTEMD_POD}/cri-containerd-{CID}.scope/kubepods.slice/kubepods-pod{ESC}.slice",
    f"/kubepods/pod{UID}/{CID}/kubepods.slice/kubepods-pod{ESC}.slice/crio-{CID}.scope",
    # ...nor one below a user's delegated systemd subtree.
    f"/user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/{CID}",
    f"/system.slice/foo.service/kubepods/pod{UID}",
    f"/foo.service/kubepods/pod{UID}",  # cgroupfs roots have no systemd units in them
    f"/init.scope/kubepods/pod{UID}/{CID}",
    f"/x@y/kubepods/pod{UID}",
    # UIDs that aren't UIDs.
    "/kubepods/podnot-a-uid",
    f"/kubepods/pod{UID.upper()}",
    f"/kubepods/pod{UID[:-1]}",
    f"/kubepods/pod{UID}0",
    f"/kubepods/pod{ESC}",  # the systemd escape under cgroupfs
    f"/kubepods.slice/kubepods-pod{UID}.slice",  # dashes would be slice levels
    f"/kubepods.slice/kubepods-pod{ESC}_.slice",
    f"/kubepods/pod{STATIC_UID[:-1]}",
    f"/kubepods/pod-{UID}",
    # Ids that aren't 64 hex.
    f"/kubepods/pod{UID}/{CID[:-1]}",
    f"/kubepods/pod{UID}/{CID}0",
    f"/kubepods/pod{UID}/{CID.upper()}",
    f"{SYSTEMD_POD}/cri-containerd-{CID[:-1]}.scope",
    f"{SYSTEMD_POD}/containerd-{CID}.scope",
    f"{SYSTEMD_POD}/cri-o-{CID}.scope",
    f"{SYSTEMD_POD}/cri-containerd-{CID}.slice",
    f"{SYSTEMD_POD}/cri-containerd-{CID}.scope.scope",
    f"/kubepods/pod{UID}/docker-{CID}",
    # Slices that don't expand as systemd expands them, QoS classes that don't exist.
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{ESC}.slice",
    f"/kubepods.slice/kubepods-burstable.slice/pod{ESC}.slice",
    f"/kubepods.slice/kubepods-guaranteed.slice/kubepods-guaranteed-pod{ESC}.slice",
    f"/kubepods/guaranteed/pod{UID}",
    f"/kubepods.slice/kubepods-burstable-pod{ESC}.slice",
    f"/kubelet.slice/kubepods.slice/kubepods-pod{ESC}.slice",
    f"/kubepods/burstable/besteffort/pod{UID}",
    # Mixed drivers.
    f"/kubepods.slice/kubepods-pod{ESC}.slice/{CID}",
    f"/kubepods/pod{UID}/cri-containerd-{CID}.scope",
    # Path syntax: relative, doubled or trailing slashes, dot segments, NUL, extra characters.
    f"kubepods/pod{UID}",
    f"//kubepods/pod{UID}",
    f"/kubepods//pod{UID}",
    f"/kubepods/pod{UID}/",
    f"/kubepods/./pod{UID}",
    f"/x/../kubepods/pod{UID}",
    f"/kubepods/pod{UID}\0",
    f"/kubepods/pod{UID}/{CID}\n",
    f"/kubepods/pod{UID} ",
    f"/kubepods/pod{UID}/ {CID}",
    f"/kubepods/pod{UID}/{CID}\u200b",
    "/kubepods/pod" + UID.replace("a", "\u0430"),  # Cyrillic a
    # Over-long: a prefix deeper than any kubelet root, a name past NAME_MAX, PATH_MAX.
    "/r" * 9 + f"/kubepods/pod{UID}",
    "/" + "r" * 256 + f"/kubepods/pod{UID}",
    "/r" * 2100 + f"/kubepods/pod{UID}",
    "",
]


@pytest.mark.parametrize("uid", [str(uuid.uuid4()), "d41d8cd98f00b204e9800998ecf8427e"])
def test_pod_cgroup_names_are_the_pod_cgroups_of_every_layout(uid: str) -> None:
    """What the kernel lists a known pod's cgroup by (bpf/lib/cgroup.h): its name in each
    driver and QoS class, short enough for the map's key."""
    cgroupfs, guaranteed, burstable, besteffort = pod_cgroup_names(uid)
    layouts = {
        f"/kubepods/{cgroupfs}": "Guaranteed",
        f"/kubepods/burstable/{cgroupfs}": "Burstable",
        f"/kubepods.slice/{guaranteed}": "Guaranteed",
        f"/kubepods.slice/kubepods-burstable.slice/{burstable}": "Burstable",
        f"/kubepods.slice/kubepods-besteffort.slice/{besteffort}": "BestEffort",
    }
    for path, qos in layouts.items():
        assert parse(path) == KubeCgroup(uid, None, None, qos), path
    assert max(len(n) for n in pod_cgroup_names(uid)) < abi.Const.POD_CGROUP_NAME
    assert pod_cgroup_names("../" + uid) == pod_cgroup_names(uid.upper()) == ()


@pytest.mark.parametrize("path", LOOK_ALIKES)
def test_look_alikes_are_refused(path: str) -> None:
    assert parse(path) is None


def test_deepest_accepted_prefix() -> None:
    assert parse("/r" * 8 + f"/kubepods/pod{UID}") == pod("Guaranteed")


def systemd_path(roots: list[str]) -> str:
    """A container's path under the systemd driver with --cgroup-root=/<roots joined by ->."""
    stems: list[str] = []
    for level in [*roots, "kubepods", "burstable", f"pod{ESC}"]:
        stems.append(f"{stems[-1]}-{level}" if stems else level)
    return "".join(f"/{s}.slice" for s in stems) + f"/crio-{CID}.scope"


def test_a_path_the_tracepoint_may_have_truncated_is_refused() -> None:
    # cgroup_mkdir's path is cut at 1023 characters; no kubelet path comes near.
    near = systemd_path(["r" * 40] * 3)
    assert len(near) < 1000 and parse(near) == ctr("Burstable", "cri-o")
    far = systemd_path(["r" * 40] * 4)
    assert len(far) > 1000 and parse(far) is None


NAMES = st.sampled_from(
    ["kubepods", "kubepods.slice", "burstable", f"pod{UID}", f"pod{ESC}", CID, f"crio-{CID}",
     f"cri-containerd-{CID}.scope", "kubepods-burstable.slice", "..", ".", "", "\0", "x.scope"]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(), st.lists(st.one_of(NAMES, st.text(max_size=70))).map("/".join)))
def test_parse_never_raises(path: str) -> None:
    result = parse(path)
    assert result is None or isinstance(result, KubeCgroup)


def test_parse_refuses_what_is_not_a_str() -> None:
    for value in (None, b"/kubepods/pod" + UID.encode(), 5, Path(f"/kubepods/pod{UID}")):
        assert parse(value) is None  # type: ignore[arg-type]


# --- v2_root -------------------------------------------------------------------------------

V1_HYBRID = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime shared:9 - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw
"""
V2 = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return path


def test_v2_root_unified_only(tmp_path: Path) -> None:
    assert v2_root(write(tmp_path, V1_HYBRID)) == Path("/sys/fs/cgroup/unified")


def test_v2_root_prefers_sys_fs_cgroup(tmp_path: Path) -> None:
    other = "50 22 0:40 / /run/other rw - cgroup2 cgroup2 rw\n"
    assert v2_root(write(tmp_path, other + V1_HYBRID + V2)) == Path("/sys/fs/cgroup")
    assert v2_root(write(tmp_path, other + V1_HYBRID)) == Path("/sys/fs/cgroup/unified")


def test_v2_root_elsewhere_with_escaped_space(tmp_path: Path) -> None:
    line = r"50 22 0:40 / /mnt/my\040cgroups rw shared:7 master:2 - cgroup2 none rw" + "\n"
    assert v2_root(write(tmp_path, line)) == Path("/mnt/my cgroups")


def test_v2_root_none(tmp_path: Path) -> None:
    # cgroup v1 only; a line that only looks like one; garbage.
    text = (
        "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "33 31 0:30 / /cgroup2 rw - cgroup cgroup2 rw\n"
        "- cgroup2\n\nnot mountinfo at all\n"
    )
    assert v2_root(write(tmp_path, text)) is None


def test_v2_root_of_this_machine() -> None:
    root = v2_root()
    assert root is not None and (root / "cgroup.controllers").exists()


# --- scan over plain directories -----------------------------------------------------------


def make(root: Path, *paths: str) -> None:
    for p in paths:
        (root / p.lstrip("/")).mkdir(parents=True, exist_ok=True)


def test_scan_finds_pods_before_their_containers(tmp_path: Path) -> None:
    other = str(uuid.UUID(int=7))
    make(
        tmp_path,
        f"{SYSTEMD_POD}/cri-containerd-{CID}.scope/container",
        f"{SYSTEMD_POD}/crio-conmon-{CID}.scope",
        f"/kubepods.slice/kubepods-pod{other.replace('-', '_')}.slice/crio-{CID}.scope",
        f"/kubepods/besteffort/pod{UID}/{CID}",
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{ESC}.slice",
        "/system.slice/containerd.service",
        f"/system.slice/cri-containerd-{CID}.scope",
        "/user.slice/user-0.slice/session-1.scope",
        f"/kubepods/pod{UID}/{CID}/kubepods/pod{other}/{CID}",  # a container's own tree
    )
    (tmp_path / "kubepods.slice" / "cgroup.procs").write_text("")  # files are not cgroups
    found = list(scan(tmp_path))
    other_pod = f"/kubepods.slice/kubepods-pod{other.replace('-', '_')}.slice"
    assert {path: kc for _, path, kc in found} == {
        SYSTEMD_POD: pod("Burstable"),
        f"{SYSTEMD_POD}/cri-containerd-{CID}.scope": ctr("Burstable", "containerd"),
        other_pod: pod("Guaranteed", other),
        f"{other_pod}/crio-{CID}.scope": ctr("Guaranteed", "cri-o", other),
        f"/kubepods/besteffort/pod{UID}": pod("BestEffort"),
        f"/kubepods/besteffort/pod{UID}/{CID}": ctr("BestEffort", None),
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{ESC}.slice": pod("Guaranteed"),
        f"/kubepods/pod{UID}": pod("Guaranteed"),
        f"/kubepods/pod{UID}/{CID}": ctr("Guaranteed", None),
    }
    assert all(cgroup_id == os.stat(tmp_path / path[1:]).st_ino for cgroup_id, path, _ in found)
    assert all(kc == parse(path) for _, path, kc in found)
    order = [path for _, path, _ in found]
    for path in order:
        parent = path.rsplit("/", 1)[0]
        if parse(path).container_id is not None:  # type: ignore[union-attr]
            assert order.index(parent) < order.index(path)


def test_scan_never_follows_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    make(real, f"/pod{UID}/{CID}")
    make(tmp_path / "root", "/kubepods")
    (tmp_path / "root/kubepods/burstable").symlink_to(real)
    (tmp_path / "root/kubepods" / f"pod{UID}").symlink_to(real / f"pod{UID}")
    assert list(scan(tmp_path / "root")) == []


def test_scan_is_bounded(tmp_path: Path) -> None:
    make(tmp_path, *(f"/kubepods/pod{uuid.UUID(int=i)}" for i in range(30)))
    assert len(list(scan(tmp_path, max_entries=31))) == 30
    with pytest.raises(CgroupScanError, match=r"scan stopped after 30 directories"):
        list(scan(tmp_path, max_entries=30))


def test_scan_does_not_walk_what_cannot_hold_a_pod(tmp_path: Path) -> None:
    # Deep system trees are pruned, not counted against the bound.
    make(tmp_path, "/system.slice/x.service/" + "/".join(["d"] * 50), f"/kubepods/pod{UID}")
    make(tmp_path, *(f"/system.slice/s{i}.service/a/b" for i in range(200)))
    assert [p for _, p, _ in scan(tmp_path, max_entries=210)] == [f"/kubepods/pod{UID}"]


def test_scan_tolerates_directories_vanishing(tmp_path: Path) -> None:
    make(tmp_path, f"/kubepods/burstable/pod{UID}/{CID}", f"/kubepods/pod{UID}/{CID}")
    walk = scan(tmp_path)
    first = next(walk)
    assert first[1] == f"/kubepods/pod{UID}"
    for path in (f"kubepods/burstable/pod{UID}/{CID}", f"kubepods/burstable/pod{UID}"):
        (tmp_path / path).rmdir()
    (tmp_path / f"kubepods/pod{UID}/{CID}").rmdir()
    (tmp_path / f"kubepods/pod{UID}").rmdir()
    assert list(walk) == []
    with pytest.raises(FileNotFoundError):
        list(scan(tmp_path / "gone"))


# --- scan over real cgroup v2 directories --------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root")
def test_scan_real_cgroup_v2() -> None:
    hierarchy = v2_root()  # only ever a cgroup2 mount: no v1 cgroup is created here
    assert hierarchy is not None
    root = hierarchy / f"stockade-test-cgroups-{os.getpid()}"
    pod_dir = root / SYSTEMD_POD[1:]
    container = pod_dir / f"cri-containerd-{CID}.scope"
    dirs = [root]
    for part in SYSTEMD_POD[1:].split("/"):
        dirs.append(dirs[-1] / part)
    dirs += [container, container / "container", pod_dir / f"crio-conmon-{CID}.scope"]
    try:
        for d in dirs:
            d.mkdir()
        assert (container / "cgroup.procs").exists()  # a real cgroup, files and all
        assert list(scan(root)) == [
            (os.stat(pod_dir).st_ino, SYSTEMD_POD, pod("Burstable")),
            (
                os.stat(container).st_ino,
                f"{SYSTEMD_POD}/{container.name}",
                ctr("Burstable", "containerd"),
            ),
        ]
    finally:
        for d in reversed(dirs):
            if d.exists():
                d.rmdir()
