"""Generated policies times generated operations, executed for real: the kernel decides as
`PartTables.decide` (which tests/unit/test_agreement.py ties to the reference evaluator).

Seeded random (reproducible; the seed is in the test id), so each example costs one bundle
reload and one driver run. `check_example` is the one body for both modes: kill mode here,
lsm mode in the test VM (tests/vm/test_lsm_shared.py, fewer seeds).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.policy.loader import YamlDocument, load_document

from .conftest import Cgroup
from .scenario import (
    PY,
    PY_COMM,
    Harness,
    Op,
    driver_argv,
    kernel_operations,
    mount_volume,
    outcome,
    predict,
)

pytestmark = pytest.mark.kernel

EXAMPLES = 24
FILE_OPS = ["createExecutable", "modifyExecutable", "createFile", "modifyFile", "deleteFile"]
CONTAINER = {
    "containerImageName": ["nginx", "redis"],
    "containerImageTag": ["1.0", "latest"],
    "kubernetesNamespace": ["shop", "prod"],
    "kubernetesPodName": ["web-1", "web-*", "db-0"],
    "kubernetesPodLabel": ["app:web", "app:*", "tier:front"],
}


def some(rng: random.Random, choices: list[str], most: int = 3) -> list[str]:
    return rng.sample(choices, rng.randint(1, min(most, len(choices))))


def selector(rng: random.Random, part: str, name: str, w: Path) -> dict[str, Any]:
    dirs = [str(w), f"{w}/a", f"{w}/a/b", f"{w}/c"]
    files = [f"{d}/{n}" for d in dirs for n in ("x", "y.sh", "bin")]
    patterns = files + [f"{d}/*" for d in dirs] + [f"{d}/**" for d in dirs] + ["/**"]
    s: dict[str, Any] = {"name": name}
    for condition, values in CONTAINER.items():
        if rng.random() < 0.1:
            s[condition] = some(rng, values, 2)
    if rng.random() < 0.6:
        s["operation"] = some(rng, FILE_OPS if part == "file" else ["fork", "exec"])
    if part == "file":
        if rng.random() < 0.8:
            s["targetFilePath"] = some(rng, patterns)
        flag = rng.choice([None, "ignoreVolumeMounts", "ignoreVolumeFiles"])
        if flag:
            s[flag] = rng.random() < 0.5
    else:
        if rng.random() < 0.5:
            s["processExecutable"] = some(rng, [*patterns, PY, str(Path(PY).parent) + "/*"])
        elif rng.random() < 0.5:
            s["processName"] = some(rng, [PY_COMM, "bin", "x", "sh"])
        if rng.random() < 0.3:
            s["sessionLeaderInteractive"] = rng.random() < 0.5
    if len(s) == 1:
        s["operation"] = some(rng, FILE_OPS if part == "file" else ["fork", "exec"])
    return s


def policy(rng: random.Random, index: int, w: Path) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for part in rng.choice([["process"], ["file"], ["process", "file"], ["file"]]):
        selectors = [
            selector(rng, part, f"p{index}{part[0]}{i}", w) for i in range(rng.randint(1, 6))
        ]
        names = [s["name"] for s in selectors]
        responses = []
        for _ in range(rng.randint(1, 4)):
            r: dict[str, Any] = {
                "match": some(rng, names, 2),
                "actions": some(rng, ["log", "alert"]),
            }
            if rng.random() < 0.3:
                r["exclude"] = some(rng, names, 1)
            responses.append(r)
        spec[part] = {"selectors": selectors, "responses": responses}
    if index == 0 and rng.random() < 0.5:
        return spec  # a bare policy (one per file: its name is the file's)
    spec["mode"] = rng.choice(["enforce", "audit"])
    if spec["mode"] == "audit":  # would-be blocks are reported, never done
        for part in ("process", "file"):
            for r in spec.get(part, {}).get("responses", []):
                if rng.random() < 0.5:
                    r["actions"] = sorted({*r["actions"], "alert", "block"})
    if rng.random() < 0.5:
        spec["podSelector"] = {"matchLabels": rng.choice([{"app": "web"}, {"app": "db"}])}
    data = {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": f"p{index}", "namespace": rng.choice(["shop", "prod"]),
                     "uid": f"uid-{index}", "generation": index + 1},
        "spec": spec,
    }  # fmt: skip
    loaded = load_document(YamlDocument(data, 1), "generated.yaml")
    if not loaded.valid:  # the file-block safety rule: keep the example, drop its blocks
        for part in ("process", "file"):
            for r in spec.get(part, {}).get("responses", []):
                r["actions"] = [a for a in r["actions"] if a != "block"]
    return data


def container(rng: random.Random) -> dict[str, Any]:
    return {
        "container": {"imageName": rng.choice(["nginx", "redis"]),
                      "imageTag": rng.choice(["1.0", "latest"])},
        "kubernetes": {"namespace": rng.choice(["shop", "prod"]),
                       "podName": rng.choice(["web-1", "db-0"]),
                       "podLabels": rng.choice([{"app": "web"}, {"app": "db", "tier": "front"}])},
    }  # fmt: skip


def operations(rng: random.Random, w: Path, binaries: list[str]) -> list[Op]:
    """A valid sequence: a model of which files exist picks each next operation."""
    dirs = [str(w), f"{w}/a", f"{w}/a/b", f"{w}/c"]
    names = [f"{d}/{n}" for d in dirs for n in ("x", "y.sh", "new")]
    exists: set[str] = set()
    ops: list[Op] = [["chdir", rng.choice(dirs)]]
    for _ in range(rng.randint(8, 16)):
        free = [n for n in names if n not in exists]
        kind = rng.choice(["exec", "create", "create", "modify", "ftruncate", "chmod", "rename",
                           "link", "truncate", "delete"])  # fmt: skip
        if kind == "exec":
            ops.append(["exec", rng.choice(binaries)])
        elif kind == "create" or not exists:
            if not free:
                continue
            path = rng.choice(free)
            exists.add(path)
            ops.append(["create", path, rng.choice([0o644, 0o755, 0o600])])
        else:
            path = rng.choice(sorted(exists))
            if kind in ("rename", "link"):
                if not free:
                    continue
                target = rng.choice(free)
                exists.add(target)
                if kind == "rename":
                    exists.discard(path)
                ops.append([kind, path, target])
            elif kind == "chmod":
                ops.append(["chmod", path, rng.choice([0o644, 0o755])])
            elif kind == "delete":
                exists.discard(path)
                ops.append(["delete", path])
            else:
                ops.append([kind, path])
    return ops


def check_example(seed: int, harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path) -> None:
    """Example `seed` executed in the harness's mode: the documents are the prediction."""
    rng = random.Random(seed)
    for d in ("a/b", "c"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    binaries = [f"{workdir}/a/bin", f"{workdir}/c/bin", f"{workdir}/a/b/run"]
    for b in binaries:
        shutil.copy(tiny, b)
    applied = harness.apply(
        [policy(rng, i, workdir) for i in range(rng.randint(1, 3))], {cgroup: container(rng)}
    )
    ops = operations(rng, workdir, binaries)
    res, docs = harness.run(driver_argv(ops), cgroup)
    assert res.returncode == 0, res.stderr
    modes = dict.fromkeys(binaries, 0o755)
    seen = kernel_operations(ops, "/", modes, mount_volume, harness.mode)
    expected = predict(applied, cgroup.id, seen, harness.mode)
    assert [outcome(d) for d in docs] == expected
    assert {d["cloud_defend"]["enforcement_mode"] for d in docs} <= {harness.mode}


@pytest.mark.parametrize("seed", range(EXAMPLES))
def test_kernel_decides_as_the_table_interpreter(
    seed: int, harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    check_example(seed, harness, cgroup, workdir, tiny)


def long_example(
    seed: int | None, harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> set[str]:
    """Executables on paths longer than the kernel's 255-byte keys (a processExecutable may
    be 511 bytes): exact, children and recursive patterns above and below 255 bytes. Seed
    None: one selector of each kind, each in its own response. Returns the selectors the
    kernel reported."""
    rng = random.Random(seed)
    dirs = [workdir / ("d" * 120), workdir / ("d" * 120) / ("e" * 120)]
    dirs += [dirs[1] / ("f" * 60), dirs[1] / ("f" * 60) / "g"]
    binaries = [str(d / n) for d in dirs for n in ("run", "x")]
    for b in binaries:
        Path(b).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny, b)
    if seed is None:
        kinds = {
            "exactLong": [binaries[2]],
            "childrenLong": [f"{dirs[2]}/*"],
            "recursiveLong": [f"{dirs[1]}/**"],
            "recursiveShort": [f"{dirs[0]}/**"],
        }
        assert all(len(p.encode()) > 255 for p in (binaries[2], f"{dirs[1]}/**"))
        selectors: list[dict[str, Any]] = [
            {"name": n, "processExecutable": p} for n, p in kinds.items()
        ]
        responses: list[dict[str, Any]] = [{"match": [n], "actions": ["log"]} for n in kinds]
    else:
        patterns = [*binaries, *(f"{d}/*" for d in dirs), *(f"{d}/**" for d in dirs)]
        selectors = [
            {"name": f"s{i}", "operation": ["exec"], "processExecutable": some(rng, patterns)}
            for i in range(rng.randint(2, 6))
        ]
        names: list[str] = [s["name"] for s in selectors]
        responses = [
            {"match": some(rng, names, 2), "actions": some(rng, ["log", "alert"])}
            | ({"exclude": some(rng, names, 1)} if rng.random() < 0.3 else {})
            for _ in range(rng.randint(1, 4))
        ]
    policy = {"process": {"selectors": selectors, "responses": responses}}
    applied = harness.apply([policy], {cgroup: container(rng)})
    ops: list[Op] = [["exec", b] for b in rng.sample(binaries, len(binaries))]
    res, docs = harness.run(driver_argv(ops), cgroup)
    assert res.returncode == 0, res.stderr
    seen = kernel_operations(ops, "/", dict.fromkeys(binaries, 0o755), mount_volume, harness.mode)
    assert [outcome(d) for d in docs] == predict(applied, cgroup.id, seen, harness.mode)
    return {name for d in docs for name in d["cloud_defend"]["matched_selectors"]}


@pytest.mark.parametrize("seed", range(8))
def test_kernel_decides_on_long_executable_paths(
    seed: int, harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    long_example(seed, harness, cgroup, workdir, tiny)


def test_every_kind_of_long_pattern_matches_in_the_kernel(
    harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    matched = long_example(None, harness, cgroup, workdir, tiny)
    assert matched == {"exactLong", "childrenLong", "recursiveLong", "recursiveShort"}


CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "d4c" / "valid"


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.name)
def test_the_corpus_loads_into_the_kernel(
    path: Path, harness: Harness, cgroup: Cgroup, workdir: Path, tiny: Path
) -> None:
    """Every Defend for Containers policy of tests/corpus (256 selectors, 511-byte paths)
    goes into the kernel's tables, which decide an exec and a file creation as predicted
    (blocks dropped: this checks decisions, not kills)."""
    binary = workdir / "bin"
    shutil.copy(tiny, binary)
    policy = yaml.safe_load(path.read_text())
    policy.pop("version", None)
    for part in ("process", "file"):  # a kill would end the driver (its python is in /root)
        for response in policy.get(part, {}).get("responses", []):
            response["actions"] = [a for a in response["actions"] if a != "block"]
    applied = harness.apply([policy], {cgroup: container(random.Random(0))})
    ops: list[Op] = [["exec", str(binary)], ["create", f"{workdir}/new", 0o755]]
    res, docs = harness.run(driver_argv(ops), cgroup)
    assert res.returncode == 0, res.stderr
    seen = kernel_operations(ops, "/", {str(binary): 0o755}, mount_volume, harness.mode)
    assert [outcome(d) for d in docs] == predict(applied, cgroup.id, seen, harness.mode)
