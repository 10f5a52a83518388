"""Every validation rule and limit of the spec, with the error a user sees."""

from __future__ import annotations

import re
from typing import Any

import pytest

from stockade.policy.crd import structural
from stockade.policy.model import MAX_SELECTORS_PER_PART
from stockade.policy.resources import ContainerPolicySpec

from .helpers import SPEC_RESPONSES_EXAMPLE, errors, load, manifest, policy

SPEC_DEFAULT = """
process:
  selectors:
    - name: allProcesses
      operation: [fork, exec]
    - name: interactiveProcesses
      operation: [fork, exec]
      sessionLeaderInteractive: true
  responses:
    - match: [allProcesses]
      actions: [log]
    - match: [interactiveProcesses]
      actions: [alert]
file:
  selectors:
    - name: executableChanges
      operation: [createExecutable, modifyExecutable]
  responses:
    - match: [executableChanges]
      actions: [alert]
"""

SEED_SELECTOR = """
file:
  selectors:
    - name: exampleFileSelector
      operation: [createExecutable, modifyExecutable]
      containerImageName: [nginx]
      containerImageTag: [latest]
      targetFilePath: [/usr/bin/**]
      kubernetesClusterId: [cluster1]
      kubernetesClusterName: [stagingCluster]
      kubernetesNamespace: [default]
      kubernetesPodLabel: ['production:*']
      kubernetesPodName: ['nginx-pod-*']
      ignoreVolumeMounts: true
  responses:
    - match: [exampleFileSelector]
      actions: [alert]
"""


@pytest.mark.parametrize("text", [SPEC_DEFAULT, SPEC_RESPONSES_EXAMPLE, SEED_SELECTOR])
def test_spec_examples_are_valid(text: str) -> None:
    policy(text)


def file_policy(
    selectors: list[dict[str, Any]], responses: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    if responses is None:
        responses = [{"match": [selectors[0]["name"]], "actions": ["alert"]}]
    return {"file": {"selectors": selectors, "responses": responses}}


def process_policy(selectors: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "process": {
            "selectors": selectors,
            "responses": [{"match": [selectors[0]["name"]], "actions": ["log"]}],
        }
    }


def test_block_needs_alert() -> None:
    data = file_policy(
        [{"name": "x", "operation": ["createExecutable"]}], [{"match": ["x"], "actions": ["block"]}]
    )
    assert errors(data) == ["file.responses[0].actions: block needs alert in the same response"]


def test_match_names_must_be_selectors_of_the_same_part() -> None:
    data = file_policy(
        [{"name": "x", "operation": ["createExecutable"]}],
        [{"match": ["x", "allProcesses"], "exclude": ["nope"], "actions": ["alert"]}],
    )
    data |= process_policy([{"name": "allProcesses", "operation": ["exec"]}])
    assert errors(data) == [
        "file.responses[0].match[1]: 'allProcesses' is not a file selector; 'allProcesses' "
        "is a selector of the other part, and the parts never mix",
        "file.responses[0].exclude[0]: 'nope' is not a file selector",
    ]


def test_names_are_case_insensitive_and_unique() -> None:
    data = file_policy(
        [
            {"name": "Writes", "operation": ["createFile"], "targetFilePath": ["/etc/**"]},
            {"name": "writes", "operation": ["deleteFile"], "targetFilePath": ["/etc/**"]},
        ],
        [{"match": ["WRITES"], "actions": ["alert"]}],
    )
    assert errors(data) == [
        "file.selectors[1].name: 'writes' is already the name of selectors[0]; names are "
        "unique within a part, ignoring case"
    ]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("allProcesses", True),
        ("x_1-y", True),
        ("9lives", True),
        ("_x", False),
        ("-x", False),
        ("has space", False),
        ("dot.name", False),
        ("a" * 128, True),
        ("a" * 129, False),
    ],
)
def test_selector_names(name: str, ok: bool) -> None:
    data = file_policy([{"name": name, "operation": ["createExecutable"]}])
    assert (errors(data) == []) == ok


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [
        ("/usr/bin/echo", True),
        ("/usr/sbin/*", True),
        ("/usr/local/**", True),
        ("/**", True),
        ("/*", True),
        ("/", True),
        ("usr/bin", False),
        ("/usr/*/bin", False),
        ("/usr/b*", False),
        ("/usr/**/x", False),
        ("/usr//bin", False),
        ("/usr/bin/", False),
        ("/a/../b", False),
        ("/a/./b", False),
        ("/" + "a" * 254, True),
        ("/" + "a" * 255, False),
        ("/" + "é" * 127, True),
        ("/" + "é" * 128, False),  # bytes, not characters
    ],
)
def test_target_file_path_patterns(pattern: str, ok: bool) -> None:
    data = file_policy([{"name": "x", "targetFilePath": [pattern]}])
    assert (errors(data) == []) == ok, errors(data)


def test_path_byte_limit_message() -> None:
    data = file_policy([{"name": "x", "targetFilePath": ["/" + "é" * 128]}])
    assert errors(data) == [
        "file.selectors[0].targetFilePath[0]: path pattern is 257 bytes long; at most 255 allowed"
    ]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("bash", True),
        ("a" * 15, True),
        ("a" * 16, False),
        ("ab/c", False),
        ("", False),
    ],
)
def test_process_name(name: str, ok: bool) -> None:
    assert (errors(process_policy([{"name": "x", "processName": [name]}])) == []) == ok


@pytest.mark.parametrize(
    ("condition", "value", "ok"),
    [
        ("containerImageFullName", "docker.io/nginx", True),
        ("containerImageFullName", "docker.io/library/nginx", True),
        ("containerImageFullName", "registry.local:5000/team/app", True),
        ("containerImageFullName", "[fe80::1]:5000/app", True),  # bracketed IPv6 host
        ("containerImageFullName", "[::1]/team/app", True),
        ("containerImageFullName", "fe80::1:5000/app", False),  # IPv6 needs brackets
        ("containerImageFullName", "[fe80::1/app", False),
        ("containerImageFullName", "nginx", False),  # no registry and path
        ("containerImageFullName", "docker.io/nginx:latest", False),  # a tag is not part of it
        ("containerImageName", "nginx", True),
        ("containerImageName", "my.app_x-1", True),
        ("containerImageName", "Nginx", False),
        ("containerImageName", "library/nginx", False),
        ("containerImageTag", "latest", True),
        ("containerImageTag", "v1.2.3-rc_1", True),
        ("containerImageTag", ".bad", False),
        ("kubernetesNamespace", "kube-system", True),
        ("kubernetesNamespace", "Kube", False),
        ("kubernetesPodName", "nginx-pod-*", True),
        ("kubernetesPodName", "web-1", True),
        ("kubernetesPodName", "*", True),
        ("kubernetesPodName", "we*b", False),
        ("kubernetesPodLabel", "production:*", True),
        ("kubernetesPodLabel", "service:auth*", True),
        ("kubernetesPodLabel", "app.kubernetes.io/name:web", True),
        ("kubernetesPodLabel", "environment:production", True),
        ("kubernetesPodLabel", "novalue", False),
        ("kubernetesPodLabel", "a:b:c", False),
        ("kubernetesClusterId", "b2f8c7a0-5f4e-4c1e-9a55-0d2c1b8e9f10", True),
        ("kubernetesClusterName", "stagingCluster", True),
    ],
)
def test_container_condition_values(condition: str, value: str, ok: bool) -> None:
    data = file_policy([{"name": "x", condition: [value]}])
    assert (errors(data) == []) == ok, errors(data)


# A valid value for every string condition of a selector, by part.
STRING_CONDITIONS = {
    ("file", "targetFilePath"): "/etc/passwd",
    ("process", "processExecutable"): "/usr/bin/wget",
    ("process", "processName"): "wget",
    **{
        (part, condition): value
        for part in ("file", "process")
        for condition, value in {
            "containerImageFullName": "docker.io/library/nginx",
            "containerImageName": "nginx",
            "containerImageTag": "latest",
            "kubernetesClusterId": "b2f8c7a0",
            "kubernetesClusterName": "staging",
            "kubernetesNamespace": "shop",
            "kubernetesPodName": "web-1",
            "kubernetesPodLabel": "app:web",
        }.items()
    },
}


def crd_selector_schema(part: str) -> dict[str, Any]:
    spec = structural(ContainerPolicySpec)
    items: dict[str, Any] = spec["properties"][part]["properties"]["selectors"]["items"]
    return items


def crd_part_schema(part: str) -> dict[str, Any]:
    properties: dict[str, Any] = structural(ContainerPolicySpec)["properties"][part]["properties"]
    return properties


def test_the_table_covers_every_string_condition() -> None:
    for part in ("file", "process"):
        fields = crd_selector_schema(part)["properties"]
        strings = {
            name
            for name, schema in fields.items()
            if schema.get("type") == "array" and schema["items"].get("type") == "string"
            and "enum" not in schema["items"]
        }  # fmt: skip
        assert strings == {c for p, c in STRING_CONDITIONS if p == part}


@pytest.mark.parametrize(("part", "condition"), sorted(STRING_CONDITIONS))
@pytest.mark.parametrize("bad", ["\0", "\x01", "\x1f", "\x7f"])
def test_values_that_can_never_match_are_refused_by_model_and_crd(
    part: str, condition: str, bad: str
) -> None:
    """NUL can't be in any value the kernel or Kubernetes gives; control characters can't
    be in anything but a file's name (so a path or a process name may hold them)."""
    good = STRING_CONDITIONS[(part, condition)]
    value = good[:2] + bad + good[2:]
    may_hold = bad != "\0" and condition in ("targetFilePath", "processExecutable", "processName")
    selector: dict[str, Any] = {"name": "x", condition: [value]}
    data = file_policy([selector]) if part == "file" else process_policy([selector])
    found = errors(data)
    pattern = crd_selector_schema(part)["properties"][condition]["items"]["pattern"]
    assert re.search(pattern, good)
    if may_hold:
        assert found == []
        assert re.search(pattern, value)
    else:
        assert len(found) == 1 and found[0].startswith(f"{part}.selectors[0].{condition}[0]: ")
        assert ("NUL byte" in found[0]) == (bad == "\0"), found
        assert not re.search(pattern, value)


@pytest.mark.parametrize(
    ("part", "a", "b"),
    [
        ("file", "containerImageFullName", "containerImageName"),
        ("file", "ignoreVolumeMounts", "ignoreVolumeFiles"),
        ("process", "processExecutable", "processName"),
        ("process", "containerImageFullName", "containerImageName"),
    ],
)
def test_forbidden_combinations(part: str, a: str, b: str) -> None:
    values = {
        "containerImageFullName": ["docker.io/nginx"],
        "containerImageName": ["nginx"],
        "ignoreVolumeMounts": True,
        "ignoreVolumeFiles": True,
        "processExecutable": ["/bin/sh"],
        "processName": ["sh"],
    }
    selector = {"name": "x", a: values[a], b: values[b]}
    data = file_policy([selector]) if part == "file" else process_policy([selector])
    assert errors(data) == [f"{part}.selectors[0]: {a} and {b} can't both be in one selector"]


def test_selector_needs_a_condition() -> None:
    assert errors(file_policy([{"name": "x"}])) == [
        "file.selectors[0]: selector 'x' has no condition; add at least one, e.g. operation"
    ]


@pytest.mark.parametrize(
    "data",
    [
        {"file": {"selectors": [], "responses": [{"match": ["x"], "actions": ["log"]}]}},
        file_policy([{"name": "x", "operation": []}]),
        file_policy(
            [{"name": "x", "operation": ["createFile"]}], [{"match": [], "actions": ["log"]}]
        ),
        file_policy([{"name": "x", "targetFilePath": [""]}]),
        file_policy([{"name": "", "operation": ["createFile"]}]),
        {},
    ],
)
def test_no_empty_lists_or_strings(data: dict[str, Any]) -> None:
    assert errors(data)


def test_an_empty_exclude_means_no_exclude() -> None:
    """Defend for Containers accepts `exclude: []`; so does the CRD (minItems 0)."""
    data = file_policy(
        [{"name": "x", "operation": ["createFile"]}],
        [{"match": ["x"], "exclude": [], "actions": ["log"]}],
    )
    assert policy(data).policy.file is not None
    response = crd_part_schema("file")["responses"]["items"]["properties"]
    assert response["exclude"]["minItems"] == 0 and response["match"]["minItems"] == 1


def test_a_top_level_version_is_accepted_and_ignored() -> None:
    data = {"version": "1", **file_policy([{"name": "x", "operation": ["createFile"]}])}
    assert policy(data).policy.parts().keys() == {"file"}


@pytest.mark.parametrize(
    ("condition", "part"),
    [
        ("sessionLeaderInteractive", "process"),
        ("ignoreVolumeMounts", "file"),
        ("ignoreVolumeFiles", "file"),
    ],
)
@pytest.mark.parametrize("value", ["true", "false", 1, 0, "yes"])
def test_boolean_conditions_take_booleans_only(condition: str, part: str, value: Any) -> None:
    selector = {"name": "x", "operation": ["exec" if part == "process" else "createFile"]}
    make = process_policy if part == "process" else file_policy
    assert errors(make([{**selector, condition: True}])) == []
    assert errors(make([{**selector, condition: value}])) == [
        f"{part}.selectors[0].{condition}: Input should be a valid boolean"
    ]


def test_a_quoted_true_is_refused_from_yaml() -> None:
    text = """
process:
  selectors:
    - name: x
      sessionLeaderInteractive: "true"
  responses:
    - match: [x]
      actions: [alert]
"""
    assert errors(text) == [
        "process.selectors[0].sessionLeaderInteractive: Input should be a valid boolean"
    ]


def test_unknown_fields_and_operations_are_named() -> None:
    data = file_policy([{"name": "x", "operation": ["exec"], "targetFilePaths": ["/a"]}])
    assert errors(data) == [
        "file.selectors[0].operation[0]: Input should be 'createExecutable', "
        "'modifyExecutable', 'createFile', 'modifyFile' or 'deleteFile'",
        "file.selectors[0].targetFilePaths: unknown field 'targetFilePaths'; "
        "did you mean 'targetFilePath'?",
    ]


def test_duplicate_values_are_refused() -> None:
    assert errors(file_policy([{"name": "x", "operation": ["createFile", "createFile"]}])) == [
        "file.selectors[0].operation: operation lists 'createFile' twice"
    ]


@pytest.mark.parametrize(
    ("selector", "narrowing_exclude", "ok"),
    [
        ({"operation": ["createExecutable", "modifyExecutable"]}, False, True),
        ({"operation": ["createFile"], "targetFilePath": ["/etc/**"]}, False, True),
        ({"operation": ["modifyFile"]}, False, False),
        ({"operation": ["deleteFile", "createExecutable"]}, False, False),
        ({"containerImageName": ["nginx"]}, False, False),  # no operation: every operation
        ({"operation": ["modifyFile"]}, True, True),
    ],
)
def test_file_block_safety_rule(
    selector: dict[str, Any], narrowing_exclude: bool, ok: bool
) -> None:
    selectors = [{"name": "x", **selector}, {"name": "tmp", "targetFilePath": ["/tmp/**"]}]
    response: dict[str, Any] = {"match": ["x"], "actions": ["alert", "block"]}
    if narrowing_exclude:
        response["exclude"] = ["tmp"]
    found = errors(file_policy(selectors, [response]))
    assert (found == []) == ok, found
    if not ok:
        assert found[0].startswith("file.responses[0].match[0]: blocking 'x' would block every")


def test_block_on_every_path_is_valid_with_a_warning() -> None:
    data = file_policy(
        [{"name": "all", "operation": ["modifyFile"], "targetFilePath": ["/**"]}],
        [{"match": ["all"], "actions": ["alert", "block"]}],
    )
    loaded = load(data)
    assert loaded.valid
    assert [(f.path, f.severity) for f in loaded.findings] == [
        ("file.responses[0].match[0]", "warning")
    ]
    assert "/**" in loaded.findings[0].message


def test_many_selectors_and_responses() -> None:
    count = MAX_SELECTORS_PER_PART
    selectors = [
        {"name": f"s{i}", "operation": ["exec"], "processName": [f"p{i}"]} for i in range(count)
    ]
    responses = [{"match": [f"s{i}"], "actions": ["log"]} for i in range(count)]
    data: dict[str, Any] = {"process": {"selectors": selectors, "responses": responses}}
    assert errors(data) == []
    data["process"]["selectors"].append({"name": "one-more", "operation": ["exec"]})
    assert errors(data) == [
        f"process.selectors: List should have at most {count} items after validation, "
        f"not {count + 1}"
    ]


def test_two_hundred_selectors_in_one_part_are_valid() -> None:
    selectors = [
        {"name": f"s{i}", "operation": ["createFile"], "targetFilePath": [f"/d{i}/*"]}
        for i in range(200)
    ]
    assert errors(file_policy(selectors)) == []


def test_manifests_prefix_paths_with_spec() -> None:
    spec = file_policy(
        [{"name": "x", "operation": ["createExecutable"]}], [{"match": ["x"], "actions": ["block"]}]
    )
    data = manifest("ContainerPolicy", {**spec, "mode": "audit"})
    assert errors(data) == [
        "spec.file.responses[0].actions: block needs alert in the same response"
    ]


def test_manifest_needs_a_part_and_a_known_mode() -> None:
    assert errors(manifest("ContainerPolicy", {"mode": "enforce"})) == [
        "spec: a policy needs a process part, a file part or both"
    ]
    spec = file_policy([{"name": "x", "operation": ["createExecutable"]}])
    assert errors(manifest("ContainerPolicy", {**spec, "mode": "learn"})) == [
        "spec.mode: Input should be 'enforce' or 'audit'"
    ]


def test_container_policy_has_no_namespace_selector() -> None:
    spec = file_policy([{"name": "x", "operation": ["createExecutable"]}])
    found = errors(manifest("ContainerPolicy", {**spec, "namespaceSelector": {}}))
    assert found == ["spec.namespaceSelector: field 'namespaceSelector' is not allowed here"]


def test_label_selector_operators() -> None:
    spec = file_policy([{"name": "x", "operation": ["createExecutable"]}])
    spec["podSelector"] = {"matchExpressions": [{"key": "app", "operator": "Near"}]}
    assert errors(manifest("ContainerPolicy", spec)) == [
        "spec.podSelector.matchExpressions[0].operator: Input should be 'In', 'NotIn', "
        "'Exists' or 'DoesNotExist'"
    ]
