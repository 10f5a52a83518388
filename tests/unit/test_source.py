"""The reader's own rules: what YAML and JSON mean here, beyond refusing hostile files."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from stockade.policy.source import SourceError, parse_json, parse_yaml


def yaml_value(text: str) -> Any:
    return parse_yaml(text, "f.yaml")[0].data


def refusal(text: str, json: bool = False) -> str:
    with pytest.raises(SourceError) as caught:
        parse_json(text, "f.json") if json else parse_yaml(text, "f.yaml")
    return str(caught.value).removeprefix("f.json: " if json else "f.yaml: ")


def test_yaml_scalars_read_as_the_safe_loader_reads_them() -> None:
    text = "a: 0x1F\nb: 1_000\nc: 2024-01-01\nd: ~\ne: 'yes'\nf: yes\ng: !!str 5\nh: 1.5\n"
    assert yaml_value(text) == {
        "a": 31, "b": 1000, "c": datetime.date(2024, 1, 1), "d": None,
        "e": "yes", "f": True, "g": "5", "h": 1.5,
    }  # fmt: skip


def test_merge_keys_own_keys_win_then_earlier_merges() -> None:
    text = "x: &x {a: 1, b: 1}\ny: &y {b: 2, c: 2}\nz: {<<: [*x, *y], a: 0, '<<': literal}\n"
    assert yaml_value(text)["z"] == {"a": 0, "b": 1, "c": 2, "<<": "literal"}


def test_lines_of_fields_and_aliases() -> None:
    doc = parse_yaml("a:\n  - x\n  - &n {b: 1}\nc: *n\n", "f.yaml")[0]
    assert doc.line_of(("a", 1, "b")) == 3
    assert doc.line_of(("c", "b")) == 4  # where the alias is, not the anchor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: !!set {x}\n", "tag tag:yaml.org,2002:set is not supported here (line 1, column 4)"),
        ("a: !!python/name:os.system x\n", "unknown tag tag:yaml.org,2002:python/name:os.system"),
        ("a: 2024-13-45\n", "'2024-13-45' is not a valid timestamp: month must be in 1..12"),
        ("? [a]\n: 1\n", "a key must be a string or another scalar (line 1, column 3)"),
        ("a: &a [*a]\n", "alias *a names no complete anchor before it (line 1, column 8)"),
        ("a: 18446744073709551616\n", "the number 18446744073709551616 is out of range"),
        ("a: !!int \n", "'' is not a valid int: it is empty (line 1, column 4)"),
        ("a: !!float ''\n", "'' is not a valid float: it is empty (line 1, column 4)"),
        ('{!!binary "/x": 1}\n', "'/x' is not a valid binary: failed to decode base64 data"),
        ("a: 1\nTrue: 3\ntrue: 4\n", "duplicate key True (lines 2 and 3)"),
        ("a: 'x\n", "not valid YAML: found unexpected end of stream (line 2, column 1)"),
        ("a: 1\n\xa0\x85\x7f", "character U+007F is not allowed in YAML text (line 2, column 3)"),
    ],
)
def test_yaml_refusals(text: str, expected: str) -> None:
    assert expected in refusal(text) and "\n" not in refusal(text)


def test_json_reads_as_json() -> None:
    doc = parse_json('{"a": 1e5, "b": "\\ud83d\\ude00 \\u00e9", "c": [true, null, -0.5]}', "f")
    assert doc.data == {"a": 100000.0, "b": "😀 é", "c": [True, None, -0.5]}
    assert parse_json('\n{"a":\n  {"b": 18446744073709551615}}', "f").line_of(("a", "b")) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "not valid JSON: no value (line 1)"),
        ('{"a": 1}\n{"b": 2}', "not valid JSON: did not find expected <document start>"),
        ('{"a": x}', "not valid JSON: 'x' needs double quotes (line 1, column 7)"),
        ('{"a": 0123}', "'0123' needs double quotes"),
        ("{'a': 1}", "not valid JSON: strings take double quotes (line 1, column 2)"),
        ("a: 1", "not valid JSON: YAML block style, anchor or tag (line 1, column 1)"),
        ('{"a": NaN}', "'NaN' needs double quotes"),
        ('{"a": 1, "a": 2}', "duplicate key 'a' (lines 1 and 1)"),
        ('{"part": "file"', "did not find expected ',' or '}' (line 1, column 16)"),
        ('"\\ud800"', "not valid JSON: found invalid Unicode character escape code"),
    ],
)
def test_json_refusals(text: str, expected: str) -> None:
    assert expected in refusal(text, json=True)
