"""crds/ is generated from the models and must not go stale."""

from __future__ import annotations

from pathlib import Path

from stockade.policy.crd import all_crds, render

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_crds_directory_matches_the_models() -> None:
    expected = {name: render(crd) for name, crd in all_crds().items()}
    found = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    stale = sorted(n for n in expected.keys() | found.keys() if expected.get(n) != found.get(n))
    assert not stale, f"crds/ is stale ({', '.join(stale)}): run `make crds`"


def test_no_defaults_in_the_schema() -> None:
    """A schema default shows as a permanent diff in GitOps tools."""
    for name in all_crds():
        assert "default:" not in render(all_crds()[name])
