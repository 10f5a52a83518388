"""crds/ and the chart's copy are generated from the models and must not go stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stockade.policy.crd import all_crds, render

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("directory", ["crds", "charts/stockade/crds"])
def test_crds_directory_matches_the_models(directory: str) -> None:
    expected = {name: render(crd) for name, crd in all_crds().items()}
    found = {p.name: p.read_text() for p in (REPO / directory).glob("*.yaml")}
    stale = sorted(n for n in expected.keys() | found.keys() if expected.get(n) != found.get(n))
    assert not stale, f"{directory}/ is stale ({', '.join(stale)}): run `make crds`"


def test_no_defaults_in_the_schema() -> None:
    """A schema default shows as a permanent diff in GitOps tools."""
    for name in all_crds():
        assert "default:" not in render(all_crds()[name])


def test_every_field_is_described() -> None:
    """`kubectl explain` shows each field's description; metadata is the apiserver's own."""
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub and name != "metadata":
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    for name, crd in all_crds().items():
        walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], name)
    assert missing == []


def test_every_crd_is_in_the_stockade_category() -> None:
    assert all(crd["spec"]["names"]["categories"] == ["stockade"] for crd in all_crds().values())
