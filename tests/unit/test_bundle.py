"""The bundle contract: pinned bytes and hash, a schema kept fresh, and a codec that refuses
whatever this code could not have written (the sensor then keeps the bundle in force)."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from stockade.operator.bundles import configmap
from stockade.policy.bundle import (
    BUNDLE_GZIP_KEY,
    BUNDLE_KEY,
    HASH_ANNOTATION,
    Bundle,
    BundleError,
    configmap_payload,
    decode,
    encode,
    from_configmap,
    render_json_schema,
)
from stockade.policy.compiler import compile_bundle
from stockade.policy.loader import iter_policies

from .helpers import manifest, policy
from .test_compiler import many_selector_policy

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "docs" / "bundle.schema.json"

WEB = {
    "mode": "audit",
    "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
    "process": {
        "selectors": [
            {
                "name": "shells",
                "processName": ["bash"],
                "kubernetesPodName": ["web-*"],
                "sessionLeaderInteractive": True,
            }
        ],
        "responses": [{"match": ["shells"], "actions": ["alert", "block"]}],
    },
    "file": {
        "selectors": [{"name": "etc", "targetFilePath": ["/etc/**"], "ignoreVolumeMounts": True}],
        "responses": [{"match": ["etc"], "actions": ["log"]}],
    },
}
# The bytes the compiler wrote before the bundle had typed models: the hash of a bundle
# already in a cluster does not change when the operator is upgraded.
WEB_BYTES = (
    b'{"file":{"operations":{"createExecutable":"1","createFile":"1","deleteFile":"1",'
    b'"modifyExecutable":"1","modifyFile":"1"},"paths":{"any":"0","children":{},"exact":{},'
    b'"recursive":{"/etc":"1"}},"responses":[{"actions":["log"],"exclude":"0","match":"1",'
    b'"policy":0}],"selectors":[{"bit":0,"container":{},"name":"etc","policy":0}],'
    b'"volumes":{"ignoreFiles":"0","ignoreMounts":"1"}},'
    b'"hash":"sha256:7480a39a06620b301495f723d3f54e5dbf378de1aace882ac264f7107fb78927",'
    b'"node":"n1","policies":[{"generation":0,"kind":"ContainerPolicy","mode":"audit",'
    b'"name":"web","namespace":"shop","scope":{"namespaces":["shop"],"podSelector":'
    b'{"matchExpressions":[{"key":"app","operator":"In","values":["web"]}]}},"uid":""}],'
    b'"process":{"interactive":{"requireFalse":"0","requireTrue":"1"},"names":{"any":"0",'
    b'"exact":{"bash":"1"}},"operations":{"exec":"1","fork":"1"},"paths":{"any":"1",'
    b'"children":{},"exact":{},"recursive":{}},"responses":[{"actions":["alert","block"],'
    b'"exclude":"0","match":"1","policy":0}],"selectors":[{"bit":0,"container":'
    b'{"kubernetesPodName":["web-*"]},"name":"shells","policy":0}]},"schemaVersion":1}'
)
EXAMPLES_HASH = "sha256:446c6aa3b2f0974f9dcb1e5eb1e32d638b6b6129f36d2616437e047bb19f77ad"


def web_bundle() -> Bundle:
    return compile_bundle([policy(manifest("ContainerPolicy", WEB, name="web"))], node="n1")


def big_bundle() -> Bundle:
    """Large enough to travel gzipped."""
    docs = [many_selector_policy(f"p{i}", 256, offset=256 * i) for i in range(2)]
    return compile_bundle(docs, node="n1")


def test_schema_file_matches_the_models() -> None:
    assert SCHEMA.read_text() == render_json_schema(), (
        "docs/bundle.schema.json is stale: run `make schemas`"
    )


def test_bundles_validate_against_the_schema_file() -> None:
    """The schema says what the encoder writes (masks as hex strings, no extra fields)."""
    Draft202012Validator.check_schema(json.loads(SCHEMA.read_text()))
    schema = Draft202012Validator(json.loads(SCHEMA.read_text()))
    for bundle in (web_bundle(), big_bundle()):
        assert list(schema.iter_errors(json.loads(encode(bundle)))) == []
    data = json.loads(WEB_BYTES)
    data["file"]["paths"]["any"] = 1
    data["process"]["paths"]["globs"] = {}
    assert sorted(e.message for e in schema.iter_errors(data)) == [
        "1 is not of type 'string'",
        "Additional properties are not allowed ('globs' was unexpected)",
    ]


def test_same_bytes_and_hash_as_before_the_typed_models() -> None:
    assert encode(web_bundle()) == WEB_BYTES
    examples = list(iter_policies(sorted((ROOT / "examples" / "policies").glob("*.yaml"))))
    labels = {"default": {}, "shop": {"a": "b"}}
    assert compile_bundle(examples, namespace_labels=labels).hash == EXAMPLES_HASH


def test_a_sealed_bundles_kept_bytes_are_those_of_its_model() -> None:
    """`seal` keeps the bytes it hashed (with the hash): the same as serializing the model."""
    for bundle in (web_bundle(), big_bundle()):
        model = json.dumps(bundle.to_json(), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()  # fmt: skip
        assert encode(bundle) == model
        assert decode(model).hash == bundle.hash  # decode checks the hash against the bytes


def test_decode_reads_back_what_encode_wrote() -> None:
    bundle = web_bundle()
    assert decode(WEB_BYTES) == bundle
    assert decode(json.dumps(json.loads(WEB_BYTES), indent=2)) == bundle  # as `stockade compile`


@pytest.mark.parametrize("make", [web_bundle, big_bundle], ids=["plain", "gzip"])
def test_the_operators_configmap_decodes_to_its_bundle(make: Callable[[], Bundle]) -> None:
    bundle = make()
    cm = configmap(bundle, "n1", "uid-1", "stockade-system", "east")
    key = BUNDLE_KEY if make is web_bundle else BUNDLE_GZIP_KEY
    assert key in {**cm["data"], **cm.get("binaryData", {})}
    meta = cm["metadata"]
    assert from_configmap(cm["data"], cm.get("binaryData"), meta["annotations"]) == bundle


def _json(change: Callable[[dict[str, Any]], object]) -> bytes:
    data = json.loads(WEB_BYTES)
    change(data)
    return json.dumps(data).encode()


REFUSED = {
    "newer schema": (
        _json(lambda b: b.update(schemaVersion=2, processTree={})),
        r"bundle schema version 2 is newer than this reader's \(1\)",
    ),
    "older schema": (_json(lambda b: b.update(schemaVersion=0)), "schemaVersion: Input should"),
    "unknown field": (
        _json(lambda b: b["file"]["paths"].update(globs={})),
        "file.paths.globs: Extra inputs are not permitted",
    ),
    "content not its hash": (
        _json(lambda b: b["process"]["names"]["exact"].update(bash="0")),
        "bundle content hashes to sha256:[0-9a-f]{64}, not sha256:7480a39a",
    ),
    "tampered": (b'{"tampered": true}', r"schemaVersion: Field required \(and 6 more\)"),
    "not JSON": (WEB_BYTES[:-1], "not a bundle: Invalid JSON"),
    "hex with leading zero": (
        _json(lambda b: b["file"]["paths"].update(any="01")),
        "file.paths.any: a mask is lowercase hex without leading zeros",
    ),
    "mask as a number": (
        _json(lambda b: b["file"]["paths"].update(any=1)),
        "file.paths.any: a mask is lowercase hex",
    ),
    "bit as a string": (
        _json(lambda b: b["file"]["selectors"][0].update(bit="0")),
        "file.selectors.0.bit: Input should be a valid integer",
    ),
    "policy index past the policies": (
        _json(lambda b: b["file"]["responses"][0].update(policy=1)),
        "not a bundle: file refers to policy 1, past `policies`",
    ),
    "mask past the selectors": (
        _json(lambda b: b["process"]["paths"].update(any="3")),
        "process has a mask with a bit past its 1 selectors",
    ),
    "an operation missing": (
        _json(lambda b: b["process"]["operations"].pop("fork")),
        "process.operations must have every process operation",
    ),
    "unknown container condition": (
        _json(lambda b: b["file"]["selectors"][0].update(container={"podColor": ["red"]})),
        r"file.selectors.0.container.podColor.\[key\]: Input should be",
    ),
}


@pytest.mark.parametrize("raw, reason", REFUSED.values(), ids=list(REFUSED))
def test_decode_refuses_with_one_line_saying_why(raw: bytes, reason: str) -> None:
    with pytest.raises(BundleError, match=reason) as refused:
        decode(raw)
    assert "\n" not in str(refused.value)


def _gzipped(raw: bytes) -> str:
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode()


GOOD_HASH = {HASH_ANNOTATION: web_bundle().hash}
CONFIGMAPS_REFUSED = {
    "no annotation": ({BUNDLE_KEY: WEB_BYTES.decode()}, {}, {}, "has no stockade.dev/bundle-hash"),
    "annotation disputes": (
        {BUNDLE_KEY: WEB_BYTES.decode()},
        {},
        {HASH_ANNOTATION: "sha256:" + "1" * 64},
        "bundle sha256:7480a39a[0-9a-f]+ doesn't match its stockade.dev/bundle-hash sha256:111",
    ),
    "neither key": ({}, {}, GOOD_HASH, "want one of bundle.json and bundle.json.gz, found neither"),
    "both keys": (
        {BUNDLE_KEY: WEB_BYTES.decode()},
        {BUNDLE_GZIP_KEY: _gzipped(WEB_BYTES)},
        GOOD_HASH,
        "found both",
    ),
    "not base64": ({}, {BUNDLE_GZIP_KEY: "H4sI!!"}, GOOD_HASH, "bundle.json.gz is not base64"),
    "not gzip": (
        {},
        {BUNDLE_GZIP_KEY: base64.b64encode(WEB_BYTES).decode()},
        GOOD_HASH,
        "bundle.json.gz is not gzip",
    ),
    "truncated gzip": (
        {},
        {BUNDLE_GZIP_KEY: base64.b64encode(gzip.compress(WEB_BYTES)[:-12]).decode()},
        GOOD_HASH,
        "bundle.json.gz is truncated",
    ),
    "tampered, gzipped": (
        {},
        {BUNDLE_GZIP_KEY: _gzipped(b'{"tampered": true}')},
        GOOD_HASH,
        "not a bundle: schemaVersion: Field required",
    ),
}


@pytest.mark.parametrize(
    "data, binary_data, annotations, reason",
    CONFIGMAPS_REFUSED.values(),
    ids=list(CONFIGMAPS_REFUSED),
)
def test_from_configmap_refuses_with_one_line_saying_why(
    data: dict[str, str], binary_data: dict[str, str], annotations: dict[str, str], reason: str
) -> None:
    assert from_configmap({BUNDLE_KEY: WEB_BYTES.decode()}, {}, GOOD_HASH) == web_bundle()
    with pytest.raises(BundleError, match=reason) as refused:
        from_configmap(data, binary_data, annotations)
    assert "\n" not in str(refused.value)


def test_a_gzip_bomb_is_refused_unread() -> None:
    bomb = gzip.compress(b" " * (65 * 1024 * 1024), compresslevel=9, mtime=0)
    packed = base64.b64encode(bomb).decode()
    with pytest.raises(BundleError, match="unpacks to more than 67108864 bytes"):
        from_configmap({}, {BUNDLE_GZIP_KEY: packed}, GOOD_HASH)


def test_payload_is_plain_while_small() -> None:
    data, binary = configmap_payload(web_bundle())
    assert data == {BUNDLE_KEY: WEB_BYTES.decode()} and binary == {}
