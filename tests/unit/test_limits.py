"""Every limit of the policy language, in the three places that must agree.

One table: for each limit, the model accepts a value at the limit and refuses one past
it; the generated CRD states the same number at the same field; and where the spec
(`../shared/spec/policy-language.md`) states the number, it is the same too.
`tests/integration/test_crds.py` checks that the apiserver holds the CRD to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stockade.policy import model
from stockade.policy.crd import structural
from stockade.policy.resources import ContainerPolicySpec

from .helpers import errors

# The spec lives beside the repository (../shared from the main checkout, ../../shared from
# a worktree); outside the project's workspace the spec check is skipped.
SPEC = next(
    (
        found
        for parent in Path(__file__).resolve().parents[2:5]
        if (found := parent / "shared/spec/policy-language.md").exists()
    ),
    None,
)


def _selector(part: str, **conditions: Any) -> dict[str, Any]:
    return {"name": "s0", "operation": ["exec" if part == "process" else "createFile"]} | conditions


def _policy(part: str, selectors: list[dict[str, Any]], responses: Any = None) -> dict[str, Any]:
    if responses is None:
        responses = [{"match": [selectors[0]["name"]], "actions": ["alert"]}]
    return {part: {"selectors": selectors, "responses": responses}}


def _value(part: str, condition: str, make: Callable[[int], str]) -> Callable[[int], Any]:
    return lambda n: _policy(part, [_selector(part, **{condition: [make(n)]})])


def _many_selectors(n: int) -> dict[str, Any]:
    return _policy("file", [_selector("file", name=f"s{i}") for i in range(n)])


def _many_responses(n: int) -> dict[str, Any]:
    responses = [{"match": ["s0"], "actions": ["log"]}] * n
    return _policy("file", [_selector("file")], responses)


def _names(field: str) -> Callable[[int], Any]:
    def build(n: int) -> dict[str, Any]:
        selectors = [_selector("file", name=f"s{i}") for i in range(max(n, 1))]
        names = [f"s{i}" for i in range(n)]
        response = {"match": names if field == "match" else ["s0"], "actions": ["log"]}
        if field == "exclude":
            response["exclude"] = names
        return _policy("file", selectors, [response])

    return build


@dataclass(frozen=True)
class Limit:
    what: str
    crd_path: tuple[str, ...]  # from the spec's properties; "[]" steps into items
    keyword: str  # maxLength or maxItems
    limit: int
    build: Callable[[int], Any]  # a policy with a value of this size
    spec_text: str | None = None  # how the spec states it, whitespace normalised


SEL = ("file", "selectors", "[]")
PSEL = ("process", "selectors", "[]")
RESP = ("file", "responses", "[]")


def _file_string(condition: str, make: Callable[[int], str], spec_text: str | None) -> Limit:
    return Limit(
        condition,
        (*SEL, condition, "[]"),
        "maxLength",
        model.MAX_VALUE_BYTES,
        _value("file", condition, make),
        spec_text,
    )


OTHER_VALUES = "every other condition value at most 511 bytes"
LIMITS = [
    Limit(
        "targetFilePath",
        (*SEL, "targetFilePath", "[]"),
        "maxLength",
        255,
        _value("file", "targetFilePath", lambda n: "/" + "a" * (n - 1)),
        "`targetFilePath` at most 255 bytes",
    ),
    Limit(
        "processExecutable",
        (*PSEL, "processExecutable", "[]"),
        "maxLength",
        511,
        _value("process", "processExecutable", lambda n: "/" + "a" * (n - 1)),
        OTHER_VALUES,
    ),
    Limit(
        "processName",
        (*PSEL, "processName", "[]"),
        "maxLength",
        15,
        _value("process", "processName", lambda n: "a" * n),
        "`processName` at most 15",
    ),
    _file_string("containerImageFullName", lambda n: "r.io/" + "a" * (n - 5), OTHER_VALUES),
    _file_string("containerImageName", lambda n: "a" * n, OTHER_VALUES),
    _file_string("containerImageTag", lambda n: "a" * n, OTHER_VALUES),
    _file_string("kubernetesClusterId", lambda n: "a" * n, OTHER_VALUES),
    _file_string("kubernetesClusterName", lambda n: "a" * n, OTHER_VALUES),
    _file_string("kubernetesNamespace", lambda n: "a" * n, OTHER_VALUES),
    _file_string("kubernetesPodName", lambda n: "a" * n, OTHER_VALUES),
    _file_string("kubernetesPodLabel", lambda n: "k:" + "a" * (n - 2), OTHER_VALUES),
    Limit(
        "selector name",
        (*SEL, "name"),
        "maxLength",
        128,
        lambda n: _policy(
            "file", [_selector("file", name="a" * n)], [{"match": ["a" * n], "actions": ["log"]}]
        ),
        "at most 128 characters",
    ),
    Limit(
        "values per condition",
        (*SEL, "targetFilePath"),
        "maxItems",
        model.MAX_VALUES_PER_CONDITION,
        lambda n: _policy("file", [_selector("file", targetFilePath=[f"/{i}" for i in range(n)])]),
    ),
    Limit("selectors per part", ("file", "selectors"), "maxItems", 256, _many_selectors),
    Limit("responses per part", ("file", "responses"), "maxItems", 256, _many_responses),
    Limit("match names", (*RESP, "match"), "maxItems", 256, _names("match")),
    Limit("exclude names", (*RESP, "exclude"), "maxItems", 256, _names("exclude")),
]


def _crd_node(path: tuple[str, ...]) -> dict[str, Any]:
    node: dict[str, Any] = structural(ContainerPolicySpec)
    for step in path:
        node = node["items"] if step == "[]" else node["properties"][step]
    return node


@pytest.mark.parametrize("limit", LIMITS, ids=lambda limit: limit.what)
def test_model_crd_and_spec_agree(limit: Limit) -> None:
    assert errors(limit.build(limit.limit)) == []
    refused = errors(limit.build(limit.limit + 1))
    assert refused and all(f"at most {limit.limit}" in e for e in refused), refused
    assert _crd_node(limit.crd_path)[limit.keyword] == limit.limit
    if limit.spec_text is not None:
        if SPEC is None:
            pytest.skip("the spec (../shared/spec/policy-language.md) is not here")
        spec = re.sub(r"\s+", " ", SPEC.read_text())
        assert limit.spec_text in spec


def test_the_table_covers_every_string_condition() -> None:
    """A new string condition needs a row above."""
    covered = {limit.what for limit in LIMITS}
    for part in ("file", "process"):
        for name, node in _crd_node((part, "selectors", "[]"))["properties"].items():
            if node.get("items", {}).get("type") == "string" and "enum" not in node["items"]:
                assert name in covered, name
