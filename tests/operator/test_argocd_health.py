"""The Argo CD health check (deploy/argocd/health.lua) under a real Lua 5.1, Argo CD's
dialect: each status the operator writes reads Healthy, Progressing or Degraded."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_kstatus import CASES

HEALTH = Path(__file__).resolve().parents[2] / "deploy" / "argocd" / "health.lua"
GITOPS_DOC = HEALTH.parents[2] / "docs" / "gitops.md"

# (Ready's reason) → Argo CD health
EXPECTED = {
    "Applied": "Healthy", "NoTargets": "Healthy",
    "Compiling": "Progressing", "WriteFailed": "Progressing", "Applying": "Progressing",
    "Invalid": "Degraded", "BundleTooLarge": "Degraded", "SensorSilent": "Degraded",
    "NodeErrors": "Degraded",
}  # fmt: skip


def lua(value: Any) -> str:
    """A JSON value as a Lua 5.1 table constructor (what Argo CD hands the script as `obj`)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua(k)}] = {lua(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(lua(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + "".join(f"\\{b}" for b in str(value).encode()) + '"'  # \ddd: any byte


def argocd_health(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(status, message) of each object, from the script run as Argo CD runs it: a chunk
    reading the global `obj` and returning `hs`."""
    lua51 = shutil.which("lua5.1")
    if lua51 is None:
        pytest.fail("lua5.1 is missing: run scripts/setup (apt-get install lua5.1)", pytrace=False)
    driver = (
        f"local health = assert(loadfile({lua(str(HEALTH))}))\n"
        f"for _, o in ipairs({lua(objects)}) do\n"
        "  obj = o\n"
        "  local hs = health()\n"
        "  io.write(hs.status, '\\t', hs.message, '\\n')\n"
        "end\n"
    )
    out = subprocess.run([lua51, "-"], input=driver, capture_output=True, text=True, check=True)
    return [tuple(line.split("\t", 1)) for line in out.stdout.splitlines()]  # type: ignore[misc]


def policy(status: dict[str, Any] | None, generation: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": "web", "namespace": "shop", "generation": generation},
    }
    if status is not None:
        obj["status"] = status
    return obj


def test_each_reason_maps_to_its_argocd_health() -> None:
    statuses = {reason: make() for reason, (make, _) in CASES.items()}
    assert statuses.keys() == EXPECTED.keys()  # a new reason needs a decision here
    health = dict(zip(statuses, argocd_health([policy(s) for s in statuses.values()]),
                      strict=True))  # fmt: skip
    assert {reason: h[0] for reason, h in health.items()} == EXPECTED
    for reason, (_, message) in health.items():
        ready = next(c for c in statuses[reason]["conditions"] if c["type"] == "Ready")
        assert message == f"{reason}: {ready['message']}"  # the operator's words, whole


def test_no_status_and_an_unobserved_generation_are_progressing() -> None:
    applied = CASES["Applied"][0]()
    older = json.loads(json.dumps(applied))
    got = argocd_health([policy(None), policy(applied, generation=4), policy(older)])
    assert [h[0] for h in got] == ["Progressing", "Progressing", "Healthy"]
    assert got[1][1] == "Waiting for the Stockade operator to compile generation 4"


def test_the_docs_snippet_is_the_script() -> None:
    """docs/gitops.md carries the script as `argocd-cm` values, for both kinds: the same."""
    blocks = re.findall(r"```yaml\n(.*?)```", GITOPS_DOC.read_text(), re.S)
    cm = next(yaml.safe_load(b) for b in blocks if "name: argocd-cm" in b)
    script = HEALTH.read_text()
    assert cm["data"] == {
        f"resource.customizations.health.stockade.dev_{kind}": script
        for kind in ("ContainerPolicy", "ClusterContainerPolicy")
    }
