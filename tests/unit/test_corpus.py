"""The Defend for Containers corpus (tests/corpus/d4c) through validate, explain and convert.

`valid/` holds policies in Defend for Containers' bare format that must be valid here
with the same meaning; `invalid/` policies that are refused, each with the message on
its first line (`# refused: ...`); `cases.yaml` operations against the valid ones with
what `stockade explain` must say. The integration suite sends every conversion to the
apiserver (tests/integration/test_convert.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.cli import main
from stockade.policy.loader import load_file
from stockade.policy.model import Policy

from .helpers import load_text

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "d4c"
VALID = sorted((CORPUS / "valid").glob("*.yaml"))
INVALID = sorted((CORPUS / "invalid").glob("*.yaml"))
CASES: list[dict[str, Any]] = yaml.safe_load((CORPUS / "cases.yaml").read_text())


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def bare_policy(path: Path) -> Policy:
    [loaded] = load_file(path)
    assert loaded.document is not None and loaded.valid, loaded.findings
    return loaded.document.policy


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_policies_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", path)
    assert (code, out) == (0, ""), out
    assert err == f"{path}: valid (1 policy)\n"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_policies_are_refused_with_their_message(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# refused: ")
    code, out, _ = run(capsys, "validate", path)
    assert code == 1
    assert f"{path}: {expected}" in out, out


@pytest.mark.parametrize("case", CASES, ids=[f"{c['policy']}-{i}" for i, c in enumerate(CASES)])
def test_explain(case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps(case["event"]))
    code, out, err = run(
        capsys, "explain", "--policy", CORPUS / "valid" / case["policy"], "--event", event
    )
    assert code == 0, err
    said = json.loads(out)
    assert said["matched_selectors"] == case["matched"]
    assert said["actions"] == case["actions"]


def test_the_cases_cover_every_valid_policy() -> None:
    assert {c["policy"] for c in CASES} >= {p.name for p in VALID} - {"limits.yaml", "wide.yaml"}


@pytest.mark.parametrize("namespace", [None, "shop"])
@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_convert_means_the_same(
    path: Path, namespace: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["convert", str(path)] + (["--namespace", namespace] if namespace else [])
    code, out, err = run(capsys, *args)
    assert (code, err) == (0, "")
    [converted] = load_text(out)
    assert converted.valid, converted.findings
    document = converted.document
    assert document is not None
    assert document.kind == ("ContainerPolicy" if namespace else "ClusterContainerPolicy")
    assert document.namespace == namespace
    assert document.name == path.stem
    assert document.policy == bare_policy(path).model_copy(update={"version": None})


def test_convert_names_a_narrower_scope_without_taking_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "convert", CORPUS / "valid" / "namespaces.yaml")
    comments = [line for line in out.splitlines() if line.startswith("#")]
    assert "# process selector shopNetworkTools matches only in namespaces shop." in comments
    assert (
        "#       - {key: kubernetes.io/metadata.name, operator: In, values: [payments, shop]}"
        in comments
    )
    manifest = yaml.safe_load(out)
    assert "namespaceSelector" not in manifest["spec"]
    _, out, _ = run(capsys, "convert", CORPUS / "valid" / "drift-prevention.yaml")
    assert "namespaceSelector" not in out and "matches only in" not in out


def test_convert_into_a_namespace_says_which_selectors_never_match(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "convert", "--namespace", "shop", CORPUS / "valid" / "namespaces.yaml")
    assert "# process selector paymentsDownloads matches only in namespaces payments.\n" in out
    assert "#   In namespace shop it never matches.\n" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--name", "Bad_Name"], "Bad_Name is not a Kubernetes object name"),
        (["--namespace", "No"], "--namespace No is not a namespace name"),
    ],
)
def test_convert_refuses_bad_names(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "convert", *args, CORPUS / "valid" / "default.yaml")
    assert (code, out) == (1, "")
    assert expected in err and err.count("\n") == 1


def test_convert_refuses_a_manifest_and_reports_an_invalid_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.yaml"
    _, out, _ = run(capsys, "convert", CORPUS / "valid" / "default.yaml")
    manifest.write_text(out)
    code, _, err = run(capsys, "convert", manifest)
    assert code == 1 and "already a ClusterContainerPolicy; nothing to convert" in err
    code, out, _ = run(capsys, "convert", CORPUS / "invalid" / "quoted-boolean.yaml")
    assert code == 1 and "Input should be a valid boolean" in out


def test_a_hostile_file_name_stays_in_its_comment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The header comment names the source file; line breaks in the name (YAML's and
    Unicode's) must not end the comment and inject a document (found by attack)."""
    part = "process: {selectors: [{name: %s, operation: [exec]}], "
    part += "responses: [{match: [%s], actions: %s}]}"
    injected = part % ("b", "b", "[alert, block]")
    for breaker in ("\n---\n", "\u2028", "\x85"):
        source = tmp_path / f"x{breaker}{injected}{breaker}#.yaml"
        source.write_text(part % ("a", "a", "[log]"))
        capsys.readouterr()
        assert main(["convert", "--name", "x", str(source)]) == 0
        out = tmp_path / "out.yaml"
        out.write_text(capsys.readouterr().out)
        docs = [d.document for d in load_file(out) if d.document is not None]
        assert [d.name for d in docs] == ["x"], out.read_text()
