"""The generated CRDs in the real kube-apiserver: schema, CEL rules, status, columns."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Kubectl

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DRIFT = yaml.safe_load((ROOT / "examples/policies/drift-prevention.yaml").read_text())
CLUSTER = yaml.safe_load((ROOT / "examples/policies/cluster-interactive-audit.yaml").read_text())

# What `kubectl get cpol` / `ccpol` print as the header.
POLICY_COLUMNS = ["NAME", "MODE", "SELECTORS", "NODES", "BLOCKED", "ALERTS", "READY", "AGE"]


def apply(kubectl: Kubectl, obj: dict[str, Any], check: bool = True) -> Any:
    return kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj), check=check)


def get_policy(kubectl: Kubectl, namespace: str) -> Any:
    """The drift-prevention example as stored in `namespace`."""
    return json.loads(
        kubectl("get", "cpol", "drift-prevention", "-n", namespace, "-o", "json").stdout
    )


def in_namespace(obj: dict[str, Any], namespace: str, name: str | None = None) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = namespace
    if name:
        obj["metadata"]["name"] = name
    return obj


def test_a_valid_policy_is_accepted(crds: None, kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, in_namespace(DRIFT, namespace))
    got = get_policy(kubectl, namespace)
    assert got["spec"]["file"]["responses"][0]["actions"] == ["alert", "block"]
    assert "mode" not in got["spec"]  # no default written: no permanent GitOps diff


def test_applying_the_same_manifest_again_changes_nothing(
    crds: None, kubectl: Kubectl, namespace: str
) -> None:
    obj = in_namespace(DRIFT, namespace)
    apply(kubectl, obj)
    before = get_policy(kubectl, namespace)["metadata"]["resourceVersion"]
    apply(kubectl, obj)
    assert get_policy(kubectl, namespace)["metadata"]["resourceVersion"] == before
    diff = kubectl("diff", "--server-side", "-f", "-", input=json.dumps(obj), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr


def broken(mutate: Any) -> dict[str, Any]:
    obj: dict[str, Any] = copy.deepcopy(DRIFT)
    mutate(obj["spec"]["file"])
    return obj


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda f: f["responses"][0]["match"].append("nope"),
            "every name in responses[].match must be a selector of the same part",
        ),
        (
            lambda f: f["responses"][0].update(exclude=["NGINX", "ghost"]),
            "every name in responses[].exclude must be a selector of the same part",
        ),
        (
            lambda f: f["responses"][0].update(actions=["block"]),
            "block needs alert in the same response",
        ),
        (
            lambda f: f["selectors"][2].update(containerImageFullName=["docker.io/library/nginx"]),
            "containerImageFullName and containerImageName can't both be in one selector",
        ),
        (
            lambda f: f["selectors"][0].update(ignoreVolumeMounts=True, ignoreVolumeFiles=True),
            "ignoreVolumeMounts and ignoreVolumeFiles can't both be in one selector",
        ),
        (
            lambda f: f["selectors"][0].update(targetFilePath=["/usr/*/bin"]),
            "spec.file.selectors[0].targetFilePath[0]: Invalid value",
        ),
        (
            lambda f: f["selectors"][0].update(operation=["exec"]),
            'spec.file.selectors[0].operation[0]: Unsupported value: "exec"',
        ),
        (
            lambda f: f["selectors"][0].update(operation=[]),
            "spec.file.selectors[0].operation: Invalid value: 0: "
            "spec.file.selectors[0].operation in body should have at least 1 items",
        ),
    ],
)
def test_the_apiserver_refuses_invalid_policies(
    crds: None, kubectl: Kubectl, namespace: str, mutate: Any, message: str
) -> None:
    result = apply(kubectl, in_namespace(broken(mutate), namespace), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    listed = kubectl("get", "cpol", "-n", namespace, "-o", "name").stdout
    assert listed == ""


@pytest.mark.parametrize(
    ("part", "condition", "value", "shown"),
    [
        ("process", "processName", "ba\0sh", "processName[0]"),
        ("process", "processExecutable", "/bin/ba\0sh", "processExecutable[0]"),
        ("file", "targetFilePath", "/etc/\0", "targetFilePath[0]"),
        ("file", "kubernetesClusterName", "prod\0", "kubernetesClusterName[0]"),
        ("file", "kubernetesClusterId", "id\x01", "kubernetesClusterId[0]"),
    ],
)
def test_the_apiserver_refuses_values_that_can_never_match(
    crds: None, kubectl: Kubectl, namespace: str, part: str, condition: str, value: str, shown: str
) -> None:
    """The same values the model refuses (tests/unit/test_model.py) by the CRD's patterns."""
    obj = in_namespace(CLUSTER if part == "process" else DRIFT, namespace)
    obj["kind"] = "ContainerPolicy"
    obj["spec"].pop("namespaceSelector", None)
    selector = obj["spec"][part]["selectors"][0]
    for other in ("processExecutable", "processName"):
        selector.pop(other, None)
    selector[condition] = [value]
    result = apply(kubectl, obj, check=False)
    assert result.returncode != 0
    assert f"spec.{part}.selectors[0].{shown}: Invalid value" in result.stderr, result.stderr
    assert kubectl("get", "cpol", "-n", namespace, "-o", "name").stdout == ""


def test_process_part_rule_in_the_apiserver(crds: None, kubectl: Kubectl) -> None:
    obj = copy.deepcopy(CLUSTER)
    obj["spec"]["process"]["selectors"][0]["processExecutable"] = ["/bin/bash"]
    result = apply(kubectl, obj, check=False)
    assert result.returncode != 0
    assert "processExecutable and processName can't both be in one selector" in result.stderr


def test_a_part_with_256_selectors_is_accepted(
    crds: None, kubectl: Kubectl, namespace: str
) -> None:
    selectors = [
        {"name": f"sel-{i}", "operation": ["createFile"], "targetFilePath": [f"/data/{i}/**"]}
        for i in range(256)
    ]
    responses = [{"match": [f"sel-{i}"], "actions": ["alert"]} for i in range(256)]
    obj = {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": "wide", "namespace": namespace},
        "spec": {"file": {"selectors": selectors, "responses": responses}},
    }
    apply(kubectl, obj)


def test_every_response_naming_every_selector_is_within_the_cel_budget(
    crds: None, kubectl: Kubectl, namespace: str
) -> None:
    """The worst case of the name rules: 256 responses, each matching and excluding all 256
    selectors (131072 names, 1.0 MB of JSON). The apiserver accepted the CRD (its estimated CEL
    cost is within budget) and evaluates this within its runtime budget."""
    names = [f"s{i}" for i in range(256)]
    selectors = [
        {"name": n, "operation": ["createFile"], "targetFilePath": [f"/{n}"]} for n in names
    ]
    responses = [{"match": names, "exclude": names, "actions": ["alert"]}] * 256
    obj = {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ContainerPolicy",
        "metadata": {"name": "every-name", "namespace": namespace},
        "spec": {"file": {"selectors": selectors, "responses": responses}},
    }
    apply(kubectl, obj)
    responses[255] = {**responses[255], "exclude": [*names[:255], "ghost"]}
    result = apply(kubectl, obj, check=False)
    assert "every name in responses[].exclude must be a selector" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("part", "field", "value"),
    [
        ("file", "exclude", []),  # Defend for Containers accepts an empty exclude
        ("file", "containerImageFullName", ["[fe80::1]:5000/app"]),
        ("file", "containerImageName", ["a" * 511]),
        ("process", "kubernetesPodLabel", ["k:" + "v" * 509]),
    ],
)
def test_what_defend_for_containers_accepts_the_apiserver_accepts(
    crds: None, kubectl: Kubectl, namespace: str, part: str, field: str, value: Any
) -> None:
    obj = in_namespace(CLUSTER if part == "process" else DRIFT, namespace)
    obj["kind"] = "ContainerPolicy"
    obj["spec"].pop("namespaceSelector", None)
    if field == "exclude":
        obj["spec"][part]["responses"][0]["exclude"] = value
    else:
        obj["spec"][part]["selectors"][0][field] = value
    apply(kubectl, obj)


def test_a_quoted_boolean_is_refused(crds: None, kubectl: Kubectl, namespace: str) -> None:
    obj = in_namespace(CLUSTER, namespace)
    obj["kind"] = "ContainerPolicy"
    obj["spec"].pop("namespaceSelector", None)
    obj["spec"]["process"]["selectors"][0]["sessionLeaderInteractive"] = "true"
    result = apply(kubectl, obj, check=False)
    assert result.returncode != 0
    assert "sessionLeaderInteractive: expected boolean" in result.stderr, result.stderr


def test_kubectl_explain_describes_every_condition(crds: None, kubectl: Kubectl) -> None:
    shown = kubectl("explain", "containerpolicies.spec.file.selectors").stdout
    words = " ".join(shown.split())  # kubectl wraps lines
    assert "<no description>" not in shown
    for condition in ("targetFilePath", "ignoreVolumeMounts", "kubernetesPodLabel"):
        assert f"{condition} <" in words
    assert "at most 255 bytes" in words and "Example: [/etc/passwd" in words
    recursive = kubectl("explain", "--recursive", "clustercontainerpolicies").stdout
    assert "<no description>" not in recursive
    deep = kubectl("explain", "clustercontainerpolicies.spec.process.responses.match").stdout
    assert "1 to 256 names" in " ".join(deep.split())


def test_the_stockade_category_lists_policies_and_reports(
    crds: None, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, in_namespace(DRIFT, namespace))
    listed = kubectl("get", "stockade", "-A", "-o", "name").stdout.split()
    assert "containerpolicy.stockade.dev/drift-prevention" in listed
    resources = kubectl("api-resources", "--categories=stockade", "-o", "name").stdout.split()
    assert sorted(resources) == [
        "clustercontainerpolicies.stockade.dev",
        "containerpolicies.stockade.dev",
        "nodepolicyreports.stockade.dev",
    ]


def test_cluster_policy_and_columns(crds: None, kubectl: Kubectl) -> None:
    apply(kubectl, CLUSTER)
    try:
        table = kubectl("get", "ccpol").stdout.splitlines()
        assert table[0].split() == POLICY_COLUMNS
        assert table[1].split()[0] == "production-shells"
    finally:
        kubectl("delete", "ccpol", "production-shells", "--ignore-not-found")


def test_status_subresource(crds: None, kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, in_namespace(DRIFT, namespace))
    before = get_policy(kubectl, namespace)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "status": {
            "observedGeneration": before["metadata"]["generation"],
            "mode": "enforce",
            "selectors": 3,
            "nodes": {"targeted": 3, "applied": 2, "summary": "2/3", "modes": {"kill": 2}},
            "counts": {"blocked": 7, "alerted": 9, "logged": 0},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Applying",
                    "message": "node-c has not applied generation 1",
                    "lastTransitionTime": now,
                    "observedGeneration": before["metadata"]["generation"],
                }
            ],
        }
    }
    kubectl(
        "patch",
        "cpol",
        "drift-prevention",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    after = get_policy(kubectl, namespace)
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["status"]["counts"] == {"blocked": 7, "alerted": 9, "logged": 0}
    row = kubectl("get", "cpol", "-n", namespace).stdout.splitlines()[1].split()
    assert row[:7] == ["drift-prevention", "enforce", "3", "2/3", "7", "9", "False"]
    # A write to the main resource can't change the status.
    changed = in_namespace(DRIFT, namespace)
    changed["status"] = {"counts": {"blocked": 0}}
    apply(kubectl, changed)
    again = get_policy(kubectl, namespace)
    assert again["status"]["counts"]["blocked"] == 7


def test_a_status_the_schema_refuses(crds: None, kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, in_namespace(DRIFT, namespace))
    bad = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "Maybe",
                    "reason": "X",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ]
        }
    }
    result = kubectl(
        "patch",
        "cpol",
        "drift-prevention",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(bad),
        check=False,
    )
    assert result.returncode != 0
    assert 'Unsupported value: "Maybe"' in result.stderr
