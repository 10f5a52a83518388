"""The sensor's input reading in a child process (`stockade.sensor.inputs`): results, refusals
with the file and the reason, the limits, and the cached document's integrity checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stockade.sensor.inputs import (
    InputError,
    Limits,
    Reading,
    decode_applied,
    encode_applied,
    read_inputs,
)

POLICY = """process:
  selectors: [{name: a, operation: [exec]}]
  responses: [{match: [a], actions: [log]}]
"""


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "p.yaml").write_text(POLICY)
    (tmp_path / "c.json").write_text("{}")
    return tmp_path / "p.yaml", tmp_path / "c.json"


def read(policy: Path, containers: Path, limits: Limits | None = None) -> Reading:
    reading = Reading(policy, containers, policy.with_name("result"), limits or Limits())
    while not reading.poll():
        pass
    return reading


def test_the_child_hands_back_what_reading_in_process_gives(inputs: tuple[Path, Path]) -> None:
    policy, containers = inputs
    reading = read(policy, containers)
    assert reading.error is None
    raw = policy.with_name("result").read_bytes()
    assert raw == encode_applied(read_inputs(policy, containers))
    assert decode_applied(raw, policy).bundle == read_inputs(policy, containers).bundle


def test_a_refusal_names_the_file(inputs: tuple[Path, Path]) -> None:
    policy, containers = inputs
    policy.write_text("process: [unclosed")
    reading = read(policy, containers)
    assert reading.error is not None
    assert reading.error.startswith(f"{policy}: ") and "line 1" in reading.error
    containers.write_text("[]")
    assert str(read(policy, containers).error).startswith(f"{containers}: ")


def test_the_time_budget_kills_the_child(inputs: tuple[Path, Path]) -> None:
    policy, containers = inputs
    paths = [f"/d{i}/{'x' * 25}/**" for i in range(256)]  # 2.4 MB: under the size limit
    policy.write_text(json.dumps({"file": {
        "selectors": [{"name": f"s{i}", "operation": ["createFile"], "targetFilePath": paths}
                      for i in range(256)],
        "responses": [{"match": ["s0"], "actions": ["log"]}]}}))  # fmt: skip
    reading = read(policy, containers, Limits(seconds=0.2))
    assert reading.error == f"{policy}: not read and compiled within 0.2 s"


def test_memory_beyond_the_limit_is_a_refusal(inputs: tuple[Path, Path]) -> None:
    policy, containers = inputs
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    policy.write_text("\n".join([*lines, "process: *a9"]))
    reading = read(policy, containers, Limits(memory_mib=64, seconds=60))
    assert reading.error is not None
    assert reading.error.startswith(f"{policy}: ")
    # the hardened loader may refuse the aliases first; else the child runs out of memory
    assert "alias" in reading.error or reading.error.endswith(
        "out of memory (the reader may use 64 MiB)"
    )


def test_a_cached_document_is_checked(inputs: tuple[Path, Path]) -> None:
    policy, containers = inputs
    raw = encode_applied(read_inputs(policy, containers))
    assert decode_applied(raw, Path("cache")).bundle == read_inputs(policy, containers).bundle
    with pytest.raises(InputError, match=r"^cache: corrupt \(its sha256 does not match"):
        decode_applied(raw.replace(b'["log"]', b'["alert"]'), Path("cache"))
    with pytest.raises(InputError, match=r"^cache: corrupt"):
        decode_applied(raw[:-1], Path("cache"))
    with pytest.raises(InputError, match=r"^cache: not an applied bundle \(no "):
        decode_applied(raw.partition(b"\n")[2], Path("cache"))
