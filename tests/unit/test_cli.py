"""The `stockade` command as a user runs it: the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stockade.policy.bundle import decode

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "policies").glob("*.yaml"))


def stockade(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("stockade", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "stockade.cli"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_examples_are_valid() -> None:
    assert EXAMPLES
    result = stockade("validate", *EXAMPLES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_invalid_policy_lines(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "bad.yaml",
        """\
file:
  selectors:
    - name: exe
      operation: [createExecutable]
  responses:
    - match: [exe]
      actions: [block]
""",
    )
    result = stockade("validate", bad, *EXAMPLES)
    assert result.returncode == 1
    assert result.stdout == (
        f"{bad}: file.responses[0].actions: block needs alert in the same response (line 7)\n"
    )


def test_warnings_go_to_stderr_and_keep_exit_zero(tmp_path: Path) -> None:
    text = """\
file:
  selectors:
    - name: all
      operation: [modifyFile]
      targetFilePath: [/**]
  responses:
    - match: [all]
      actions: [alert, block]
"""
    result = stockade("validate", write(tmp_path, "wide.yaml", text))
    assert result.returncode == 0
    assert "warning: 'all' has targetFilePath /** in a blocking response" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "file:\n  selectors: [\n",
            "not valid YAML: did not find expected node content (line 3, column 1)",
        ),
        (
            "process:\n  selectors:\n    - name: x\n      operation: fork\n"
            "  responses: [{match: [x], actions: [log]}]\n",
            "process.selectors[0].operation: Input should be a valid list (line 4)",
        ),
        (
            "file: {selectors: [{name: x, operation: [createFile]}], responses: "
            "[{match: [x], actions: [log]}], extra: 1}\n",
            "file.extra: unknown field 'extra' (line 1)",
        ),
        ("just a string\n", "document: a policy must be a mapping (line 1)"),
        ("", "document: no ContainerPolicy, ClusterContainerPolicy or bare policy"),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
            "document: no ContainerPolicy, ClusterContainerPolicy or bare policy",
        ),
    ],
)
def test_bad_input_is_one_line_naming_file_and_position(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, "p.yaml", text)
    result = stockade("validate", path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: "), result.stdout
    assert expected in lines[0]


def test_unreadable_file() -> None:
    result = stockade("validate", "/nonexistent/p.yaml")
    assert (result.returncode, result.stdout) == (
        1,
        "/nonexistent/p.yaml: can't read: No such file or directory\n",
    )


def test_kubernetes_yaml_with_several_documents(tmp_path: Path) -> None:
    good = (ROOT / "examples/policies/drift-prevention.yaml").read_text()
    broken = good.replace("name: drift-prevention", "name: broken").replace(
        "actions: [alert, block]", "actions: [block]"
    )
    path = write(tmp_path, "two.yaml", good + "---\n" + broken)
    result = stockade("validate", path)
    assert result.returncode == 1
    assert result.stdout == (
        f"{path}: spec.file.responses[0].actions: block needs alert in the same response "
        "(line 51)\n"
    )


def explain(tmp_path: Path, policy: Path, ev: dict[str, Any]) -> dict[str, Any]:
    path = write(tmp_path, "event.json", json.dumps(ev))
    result = stockade("explain", "--policy", policy, "--event", path)
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_explain_with_the_issue_event(tmp_path: Path) -> None:
    ev: dict[str, Any] = {
        "part": "file",
        "operation": "createExecutable",
        "container": {
            "imageFullName": "docker.io/library/nginx",
            "imageName": "nginx",
            "imageTag": "latest",
        },
        "kubernetes": {
            "clusterId": "x",
            "clusterName": "east",
            "namespace": "shop",
            "podName": "web-1",
            "podLabels": {"app": "web"},
        },
        "file": {"path": "/usr/bin/x", "volume": "none"},
        "process": {"executable": "/bin/bash", "name": "bash", "interactive": True},
    }
    default = ROOT / "examples/policies/default.yaml"
    assert explain(tmp_path, default, ev) == {
        "matched_selectors": ["executableChanges"],
        "actions": ["alert"],
    }
    drift = ROOT / "examples/policies/drift-prevention.yaml"
    assert explain(tmp_path, drift, ev) == {
        "matched_selectors": ["binDirExeMods", "nginx"],
        "actions": [],
    }
    ev["container"] = {"imageName": "redis"}
    assert explain(tmp_path, drift, ev) == {
        "matched_selectors": ["binDirExeMods"],
        "actions": ["alert", "block"],
    }
    ev["kubernetes"]["namespace"] = "other"  # out of the manifest's scope
    assert explain(tmp_path, drift, ev) == {"matched_selectors": [], "actions": []}


def test_explain_in_audit_mode(tmp_path: Path) -> None:
    ev: dict[str, Any] = {
        "part": "process",
        "operation": "exec",
        "process": {"executable": "/usr/bin/apt"},
        "kubernetes": {"namespace": "a", "namespaceLabels": {"environment": "production"}},
    }
    audit = ROOT / "examples/policies/cluster-interactive-audit.yaml"
    assert explain(tmp_path, audit, ev) == {
        "matched_selectors": ["packageManagers"],
        "actions": ["alert"],
        "would_block": True,
    }


@pytest.mark.parametrize(
    ("event_text", "expected"),
    [
        (
            '{"part": "file"',
            "event.json: not valid JSON: did not find expected ',' or '}' (line 1, column 16)",
        ),
        (
            '{"part": "file", "operation": "exec"}',
            "event.json: event: operation ['exec'] is not a file operation",
        ),
        (
            '{"part": "file", "operation": "createFile", "file": {"path": "x"}}',
            "event.json: file.path: path must be absolute",
        ),
        (
            '{"part": "file", "operation": "createFile", "pod": {}}',
            "event.json: pod: unknown field",
        ),
    ],
)
def test_explain_bad_event(tmp_path: Path, event_text: str, expected: str) -> None:
    path = write(tmp_path, "event.json", event_text)
    result = stockade("explain", "--policy", EXAMPLES[0], "--event", path)
    assert result.returncode == 1
    assert result.stderr.startswith(str(tmp_path / expected.split(":")[0]))
    assert expected.split(": ", 1)[1] in result.stderr
    assert "Traceback" not in result.stderr


def test_compile_for_a_node(tmp_path: Path) -> None:
    pods = write(
        tmp_path,
        "pods.yaml",
        """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {environment: production}}
---
apiVersion: v1
kind: PodList
items:
  - {apiVersion: v1, kind: Pod, metadata: {name: web-1, namespace: shop, labels: {app: web}},
     spec: {nodeName: n1}}
  - {apiVersion: v1, kind: Pod, metadata: {name: db-0, namespace: shop, labels: {app: db}},
     spec: {nodeName: n2}}
""",
    )
    result = stockade("compile", *EXAMPLES, "--pods", pods, "--node", "n2")
    assert result.returncode == 0, result.stderr
    bundle = decode(result.stdout)  # what it prints, a sensor would accept
    assert bundle.node == "n2"
    assert [p.name for p in bundle.policies] == ["production-shells", "default"]
    again = stockade("compile", *reversed(EXAMPLES), "--pods", pods, "--node", "n2")
    assert decode(again.stdout).hash == bundle.hash
    summary = stockade("compile", *EXAMPLES, "--pods", pods, "--node", "n1", "--summary")
    assert "policy ContainerPolicy shop/drift-prevention" in summary.stdout
    assert "file: 4 selectors" in summary.stdout


def test_compile_refuses_an_invalid_policy(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "process:\n  selectors: []\n  responses: []\n")
    result = stockade("compile", bad)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}: process.selectors: ")


def test_operator_refuses_election_timings_out_of_order() -> None:
    """A renew deadline past the lease duration would let two replicas write at once."""
    proc = stockade("operator", "--lease-duration", "5", "--renew-deadline", "10")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "stockade operator: leader election needs retry period < renew deadline"
        " < lease duration (got 2.0, 10.0, 5.0)"
    )


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_operator_refuses_a_sensor_silence_threshold_that_isnt_a_time(value: str) -> None:
    """0 would make every sensor silent at once; inf would never notice one."""
    proc = stockade("operator", "--sensor-silent-after", value)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"stockade operator: --sensor-silent-after must be a number of seconds > 0,"
        f" not {float(value):g}"
    )


def test_version_as_a_command_and_as_an_option() -> None:
    from importlib.metadata import version

    command, option = stockade("version"), stockade("--version")
    assert command.returncode == option.returncode == 0
    assert command.stdout == option.stdout
    assert command.stdout.startswith(f"stockade {version('stockade')}, CRDs ")
