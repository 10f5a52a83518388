"""`serialize` writes what `json.dumps(doc, separators=(",", ":"))` wrote, byte for byte:
on documents decoded from records with hostile paths, and on any JSON value without floats
(documents hold none)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockade.policy.compiler import compile_bundle
from stockade.policy.evaluator import ContainerFacts, KubernetesFacts
from stockade.policy.loader import iter_policies
from stockade.sensor.abi import FILE_REC, PROC_REC, REC_HDR, ActionBits, Const, Hook, RecordKind
from stockade.sensor.containers import Container
from stockade.sensor.ecs import Applied, Document, document, serialize
from stockade.sensor.processes import ProcessCache
from stockade.sensor.records import CgroupRecord, decode

from ..elastic.records import HOST
from .test_elastic import POLICY

HOSTILE = [
    b"/var/www/index.php",  # the usual: orjson's output as it is
    b"/tmp/\xff\xfe-not-utf8",  # lone surrogates (surrogateescape): json's \udcff
    b"/tmp/caf\xc3\xa9",  # valid UTF-8, non-ASCII: json's \u00e9
    "/tmp/\U0001f600".encode(),  # beyond the BMP: json's surrogate pair
    b"/tmp/new\nline\r\ttab",
    b'/tmp/"quoted"\\back\\',
    b"/tmp/" + bytes(range(1, 32)),  # every control character
    b"/tmp/del\x7f",  # ASCII, but json escapes it
    b"/tmp/mixed\xc3\xa9\xff",
    b"/" + b"a" * 4000 + b"/x.php",
]
CGROUP = 77


def raw_file(path: bytes) -> bytes:
    hdr = REC_HDR.pack_fields(
        version=Const.RECORD_VERSION, kind=RecordKind.FILE, hook=Hook.OPENAT,
        actions=ActionBits.ALERT, ktime_ns=10**12, cgroup_id=CGROUP, generation=1,
        mntns=4026531840, pid=4242, tgid=4242, ppid=1,
        matched=(1).to_bytes(Const.MASK_WORDS * 8, "little"),
    )  # fmt: skip
    return FILE_REC.pack_fields(
        h=hdr, ops=1, flags=0o101, mode=0o100755, path_len=len(path), comm=path[-15:]
    ) + path  # fmt: skip


def raw_process(path: bytes) -> bytes:
    hdr = REC_HDR.pack_fields(
        version=Const.RECORD_VERSION, kind=RecordKind.PROCESS, hook=Hook.EXEC,
        actions=ActionBits.LOG, ktime_ns=10**12, cgroup_id=CGROUP, generation=1,
        mntns=4026531840, pid=4242, tgid=4242, ppid=1,
        matched=(1).to_bytes(Const.MASK_WORDS * 8, "little"),
    )  # fmt: skip
    args = path + b"\0-c\0" + path + b"\0"
    return PROC_REC.pack_fields(
        h=hdr, start_time_ns=10**11, parent_start_time_ns=1, sid=1, pgid=4242,
        comm=path[-15:], exe_len=len(path), cwd_len=len(path), args_len=len(args),
    ) + path + path + args  # fmt: skip


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Applied:
    policy = tmp_path_factory.mktemp("policy") / "p.yaml"
    policy.write_text(POLICY)
    container = Container(
        "/sys/fs/cgroup/c", CGROUP,
        ContainerFacts(image_full_name="docker.io/library/nginx", image_tag="1.27"),
        KubernetesFacts(cluster_id="c1", cluster_name="prod", namespace="shop",
                        pod_name="web-1", pod_labels={"app": "web", "note": 'a "b"\n\t'}),
    )  # fmt: skip
    return Applied(1, compile_bundle(list(iter_policies([policy]))), {CGROUP: container})


@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: repr(p[:24]))
def test_documents_serialize_as_json_dumps_did(path: bytes, applied: Applied) -> None:
    for raw in (raw_file(path), raw_process(path)):
        rec = decode(raw)
        assert not isinstance(rec, CgroupRecord)
        doc: Document = document(rec, applied, "kill", HOST)
        ProcessCache().enrich(doc, rec)
        line = serialize(doc)
        assert line == json.dumps(doc, separators=(",", ":")).encode()
        assert line.isascii() and b"\n" not in line  # one JSON line, whatever the path
        assert json.loads(line) == doc  # undecodable bytes come back as they went


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
)


@given(JSON_VALUES)
def test_any_float_free_value_serializes_as_json_dumps_did(value: Any) -> None:
    assert serialize({"v": value}) == json.dumps({"v": value}, separators=(",", ":")).encode()
