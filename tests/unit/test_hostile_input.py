"""Hostile and careless files through every CLI verb: one line naming the file, exit 1, fast.

Each case is one that gave a traceback, ran out of memory or was silently accepted
before `stockade/policy/source.py` (issue 10).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from stockade.cli import main
from stockade.policy.source import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from stockade.sensor.containers import ContainersError, load_containers

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "examples/policies/default.yaml"
EVENT = ROOT / "examples/events/new-binary-in-web-pod.json"
CLUSTER = ROOT / "examples/cluster.yaml"

SMALL = "process:\n  selectors:\n    - name: x\n      processName: [{}]\n  responses:\n    - match: [x]\n      actions: [log]\n"  # noqa: E501


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, list[str]]:
    """Exit code and the lines printed (stdout and stderr, warnings left out)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if ": warning: " not in line]
    return code, lines


def refused(capsys: pytest.CaptureFixture[str], path: Path, *args: str | Path) -> str:
    """The one line `FILE: ...` with which the command refuses `path`."""
    code, lines = cli(capsys, *args)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: "), lines
    return lines[0].removeprefix(f"{path}: ")


def alias_bomb() -> str:
    """Nine levels of nine aliases: under 1 KB, 9**9 values expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("process: {selectors: [{name: x, processName: *a9}], responses: []}")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size < 1024
    explain = ("explain", "--policy", path, "--event", EVENT)
    for args in (("validate", path), ("compile", path), explain):
        start = time.monotonic()
        line = refused(capsys, path, *args)
        assert time.monotonic() - start < 1.0
        assert line.startswith(f"more than {MAX_NODES} values in one file (MAX_NODES")
        assert line.endswith("(line 7, column 20)"), line  # a6: 9**7 values


def test_aliases_within_the_budget_still_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "process:\n  selectors:\n    - &shells {name: shells, processName: [bash, sh]}\n"
        "    - <<: *shells\n      name: again\n"
        "  responses: [{match: [shells, again], actions: [log]}]\n"
    )
    assert cli(capsys, "validate", path) == (0, [f"{path}: valid (1 policy)"])


DUPLICATE = """\
file:
  selectors:
    - {name: etc, operation: [createFile], targetFilePath: [/etc/**]}
  responses:
    - {match: [etc], actions: [alert, block]}
file:
  selectors:
    - {name: etc, operation: [createFile], targetFilePath: [/etc/**]}
  responses:
    - {match: [etc], actions: [log]}
"""


def test_a_duplicate_key_is_refused_naming_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the second `file:` won: a blocking policy compiled to log-only."""
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATE)
    for verb in ("validate", "compile"):
        assert refused(capsys, path, verb, path).startswith("duplicate key 'file' (lines 1 and 6)")
    event = tmp_path / "event.json"
    event.write_text('{"part": "file", "operation": "createFile", "part": "process"}')
    line = refused(capsys, event, "explain", "--policy", POLICY, "--event", event)
    assert line.startswith("duplicate key 'part' (lines 1 and 1)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("process: " + "[" * 10_000 + "]" * 10_000 + "\n", "(line 1, column "),
        ("process: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", "(MAX_DEPTH) (line 1, column"),
        (
            "a: &a " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\nb: [*a]\n",
            "(line 2, column 5)",
        ),
    ],
    ids=["sequences", "mappings", "through-an-alias"],
)
def test_deep_nesting_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    line = refused(capsys, path, "validate", path)
    assert "nest" in line and expected in line, line


@pytest.mark.parametrize("char", ["\0", "\x01", "\x1b", "\ufffe"])
def test_a_control_character_is_named_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], char: str
) -> None:
    path = tmp_path / "ctl.yaml"
    path.write_text(SMALL.format(f"ab{char}c"))
    line = refused(capsys, path, "validate", path)
    assert line == (f"character U+{ord(char):04X} is not allowed in YAML text (line 4, column 23)")


def test_a_list_as_metadata_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = (ROOT / "examples/policies/drift-prevention.yaml").read_text()
    path = tmp_path / "multi.yaml"
    path.write_text(policy + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: [a, b]\n")
    code, lines = cli(capsys, "validate", path)
    assert code == 0 and lines == [f"{path}: valid (1 policy)"]
    path.write_text(
        "apiVersion: stockade.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: [a]\nspec:\n"
        + SMALL.format("sh").replace("\n", "\n  ").replace("process", "  process", 1)
    )
    line = refused(capsys, path, "validate", path)
    assert line.startswith("metadata: Input should be a valid dictionary"), line
    assert line.endswith("(line 3)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: Pod\nmetadata: {namespace: x}\n", "metadata.name: Field required (line 2)"),
        ("kind: Pod\nmetadata: [a]\n", "metadata: Input should be a valid dictionary"),
        ("kind: 5\n", "kind: Input should be a valid string (line 1)"),
        ("kind: PodList\nitems: 3\n", "items: Input should be a valid list (line 2)"),
        ("kind: Pod\nmetadata: {name: a, labels: [x]}\n", "metadata.labels: Input should be"),
        ("kind: Pod\nmetadata: {name: a}\nspec: 4\n", "spec: Input should be"),
        ("kind: Namespace\nmetadata: {labels: {a: b}}\n", "metadata.name: Field required"),
        ("kind: Pod\nmetadata: {name: [a]}\n", "metadata.name: Input should be a valid string"),
        (
            "kind: PodList\nitems:\n  - kind: Pod\n    metadata: {name: a, labels: {x: 1}}\n",
            "items[0].metadata.labels.x: Input should be a valid string (line 4)",
        ),
        ("kind: PodList\nitems: [{kind: Service}]\n", "items[0]: Service is neither a Pod nor"),
        ("kind: Pod\n", "document.metadata: required field is missing (line 1)"),
    ],
)
def test_malformed_pods_are_one_line_naming_the_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text(text)
    line = refused(capsys, path, "compile", POLICY, "--pods", path, "--summary")
    assert expected in line, line


def test_a_huge_number_in_an_event_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Python refuses to read an int of more than 4300 digits: it was a ValueError traceback."""
    event = tmp_path / "event.json"
    event.write_text(EVENT.read_text().rstrip().removesuffix("}") + ', "pid": ' + "9" * 5000 + "}")
    line = refused(capsys, event, "explain", "--policy", POLICY, "--event", event)
    assert line.startswith("the number 99999999999999999999… (5000 characters) is out of range")
    assert "integers are limited to 64 bits (line " in line


def test_a_50_mb_file_is_refused_by_its_size_before_parsing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: reading it would still take the full time
    start = time.monotonic()
    for args in (("validate", path), ("compile", POLICY, "--pods", path)):
        line = refused(capsys, path, *args)
        assert line.startswith(f"larger than {MAX_FILE_BYTES} bytes (MAX_FILE_BYTES: 3 MiB")
    event = tmp_path / "big.json"
    path.rename(event)
    refused(capsys, event, "explain", "--policy", POLICY, "--event", event)
    assert time.monotonic() - start < 1.0


def test_the_largest_valid_policy_loads_in_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """256 selectors x 256 values, 2.7 MB: 4.5 s with the pure-Python loader, 0.4 s now."""
    selectors = [
        {
            "name": f"s{i}",
            "operation": ["exec"],
            "processExecutable": [f"/usr/bin/{'p' * 20}{i}_{j}" for j in range(256)],
        }
        for i in range(256)
    ]
    responses = [{"match": [f"s{i}" for i in range(64)], "actions": ["log"]}]
    path = tmp_path / "largest.yaml"
    path.write_text(json.dumps({"process": {"selectors": selectors, "responses": responses}}))
    assert path.stat().st_size > 2_500_000
    start = time.monotonic()
    assert cli(capsys, "validate", path) == (0, [f"{path}: valid (1 policy)"])
    assert time.monotonic() - start < 3.0


def test_the_containers_file_goes_through_the_same_reader(tmp_path: Path) -> None:
    path = tmp_path / "containers.json"
    cgroup = "/sys/fs/cgroup/unified"
    path.write_text(f'{{"{cgroup}": {{}},\n "{cgroup}": {{"container": {{"imageName": "x"}}}}}}')
    with pytest.raises(ContainersError, match=r"duplicate key '.*' \(lines 1 and 2\)"):
        load_containers(path)
    path.write_text(f'{{"{cgroup}": {{"kubernetes": {{"podName": 5}}}}}}\n')
    with pytest.raises(ContainersError, match=r"kubernetes.podName: .* \(line 1\)$"):
        load_containers(path)
    path.write_text('{"/a": ' + "[" * 100 + "]" * 100 + "}")
    with pytest.raises(ContainersError, match=r"nested deeper than 64 levels"):
        load_containers(path)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_heartbeat_that_isnt_a_positive_number_of_seconds_is_refused(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    value: str,
) -> None:
    # 0 or less wrote a report on every turn of the loop; nan or inf never a heartbeat
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # should it get that far
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    args = ["--node-name", "n", "--output", "jsonl:-", "--state-dir", tmp_path, "--heartbeat"]
    with pytest.raises(SystemExit) as exc:
        main(["sensor", *map(str, args), value])
    assert exc.value.code == 2
    assert f"--heartbeat: {value!r}: want a positive number of seconds" in capsys.readouterr().err
