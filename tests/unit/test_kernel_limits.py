"""The compiler refuses bundles the kernel's tables can't hold, and agrees with bpf/stockade.h."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stockade.policy.compiler import (
    MAX_RESPONSES_PER_BUNDLE_PART,
    MAX_SELECTORS_PER_BUNDLE_PART,
    CompileError,
    compile_bundle,
)
from stockade.policy.document import PolicyDocument

from .helpers import policy

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "stockade.h"


def _define(name: str) -> int:
    found = re.search(rf"^#define {name} (\d+)", HEADER.read_text(), re.MULTILINE)
    assert found, name
    return int(found.group(1))


def test_limits_match_the_kernel() -> None:
    assert _define("STK_MAX_RESPONSES") == MAX_RESPONSES_PER_BUNDLE_PART
    assert _define("STK_MASK_WORDS") * 64 == MAX_SELECTORS_PER_BUNDLE_PART


def _documents(count: int, responses: int) -> list[PolicyDocument]:
    part = {
        "selectors": [{"name": "s", "operation": ["exec"]}],
        "responses": [{"match": ["s"], "actions": ["log"]}] * responses,
    }
    return [PolicyDocument.bare(f"p{i}", policy({"process": part}).policy) for i in range(count)]


def test_a_full_bundle_compiles() -> None:
    bundle = compile_bundle(_documents(4, 256))
    assert len(bundle["process"]["responses"]) == MAX_RESPONSES_PER_BUNDLE_PART


def test_one_response_too_many_is_refused() -> None:
    with pytest.raises(CompileError, match="1025 process responses on one node; a bundle holds at"):
        compile_bundle(_documents(5, 205))
