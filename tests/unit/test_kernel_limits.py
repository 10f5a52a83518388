"""The compiler refuses bundles the kernel's tables can't hold, and agrees with its limits
(stockade.sensor.abi, itself checked against the objects' BTF in test_abi.py)."""

from __future__ import annotations

import pytest

from stockade.policy.compiler import (
    MAX_RESPONSES_PER_BUNDLE_PART,
    MAX_SELECTORS_PER_BUNDLE_PART,
    CompileError,
    compile_bundle,
)
from stockade.policy.document import PolicyDocument
from stockade.policy.tables import PathTables
from stockade.sensor.abi import Const, PathTable

from .helpers import policy


def test_limits_match_the_kernel() -> None:
    assert Const.MAX_RESPONSES == MAX_RESPONSES_PER_BUNDLE_PART
    assert Const.MASK_WORDS * 64 == MAX_SELECTORS_PER_BUNDLE_PART


def test_heads_name_the_tables_under_each_first_component() -> None:
    paths = PathTables(
        exact={"/etc/passwd": 1, "/": 2},
        children={"/etc": 4},
        recursive_lpm={"/usr/lib/": 8},
        any=0,
    )
    assert paths.heads == {
        "etc": PathTable.EXACT | PathTable.CHILDREN,
        "": PathTable.EXACT,
        "usr": PathTable.RECURSIVE,
    }
    assert paths.lookup("/etc/passwd") == 1 | 4
    assert paths.lookup("/usr/lib/x/y") == 8
    assert paths.lookup("/var/etc/passwd") == 0  # "var": no table is looked up
    # an entry under "/" matches every first component: no filter
    assert PathTables({}, {}, {"/": 16}, 0).heads is None
    assert PathTables({}, {"/": 16}, {}, 0).lookup("/anything") == 16


def test_below_names_the_directories_a_rename_moves_patterns_out_of() -> None:
    paths = PathTables(
        exact={"/etc/passwd": 1, "/": 2},
        children={"/etc/ssh": 4},
        recursive_lpm={"/usr/lib/": 8, "/": 16},
        any=0,
    )
    assert paths.below == {"/etc": 1 | 4, "/etc/ssh": 4, "/usr": 8, "/usr/lib": 8}


def _documents(count: int, responses: int) -> list[PolicyDocument]:
    part = {
        "selectors": [{"name": "s", "operation": ["exec"]}],
        "responses": [{"match": ["s"], "actions": ["log"]}] * responses,
    }
    return [PolicyDocument.bare(f"p{i}", policy({"process": part}).policy) for i in range(count)]


def test_a_full_bundle_compiles() -> None:
    bundle = compile_bundle(_documents(4, 256))
    assert len(bundle.process.responses) == MAX_RESPONSES_PER_BUNDLE_PART


def test_one_response_too_many_is_refused() -> None:
    with pytest.raises(CompileError, match="1025 process responses on one node; a bundle holds at"):
        compile_bundle(_documents(5, 205))
