"""The bundle: the operator → sensor contract, its canonical bytes, hash and ConfigMap codec.

One node's compiled policies (`compiler.compile_bundle` writes it; the sensor, the
table interpreter and the CLI read it) as frozen typed models. Everything about
the bundle's wire form lives here: the schema and its version, the canonical
encoding and hash (same inputs, same bytes), and how it travels in a ConfigMap.
`decode` and `from_configmap` refuse with a `BundleError` (one line, the reason)
anything this code did not write: a newer schema version, an unknown field, a
hash that doesn't match the content, corrupt gzip or base64. `docs/contracts.md`
says what each field means and how the schema changes safely;
`docs/bundle.schema.json` is generated from these models (`make schemas`).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from stockade.policy.document import PolicyKind
from stockade.policy.model import (
    Action,
    ContainerCondition,
    FileOperation,
    Mode,
    PartName,
    ProcessOperation,
)
from stockade.policy.resources import LabelSelector

SCHEMA_VERSION = 1

# --- the schema -------------------------------------------------------------------

MASK_PATTERN = r"^(0|[1-9a-f][0-9a-f]*)$"
_MASK = re.compile(MASK_PATTERN)
HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"


def _mask(value: Any, info: ValidationInfo) -> int:
    """A mask: in JSON the canonical lowercase hex string; from Python also an int."""
    if isinstance(value, str) and _MASK.match(value):
        return int(value, 16)
    if info.mode == "python" and type(value) is int and value >= 0:
        return value
    raise PydanticCustomError("mask", "a mask is lowercase hex without leading zeros")


Mask = Annotated[
    int,
    PlainValidator(_mask),
    PlainSerializer(lambda mask: format(mask, "x"), return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": MASK_PATTERN,
            "description": "bit i set: the selector with `bit: i` (lowercase hex)",
        }
    ),
]
Masks = dict[str, Mask]
Index = Annotated[int, Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class PolicyScope(_Frozen):
    namespaces: tuple[str, ...] | None = Field(
        description="the namespaces it applies in (a namespaceSelector already resolved); null: all"
    )
    pod_selector: LabelSelector | None = Field(description="null: every pod")

    @field_serializer("pod_selector")
    def _selector(self, selector: LabelSelector | None) -> dict[str, Any] | None:
        if selector is None:
            return None
        return selector.model_dump(by_alias=True, exclude_none=True, mode="json")


class PolicyEntry(_Frozen):
    kind: PolicyKind
    namespace: str | None = Field(description="null for cluster-scoped and bare policies")
    name: str
    uid: str
    generation: int
    mode: Mode
    scope: PolicyScope


class SelectorEntry(_Frozen):
    bit: Index = Field(description="its position in this part's masks")
    policy: Index = Field(description="index into `policies`")
    name: str = Field(description="as the policy writes it")
    container: dict[ContainerCondition, tuple[str, ...]] = Field(
        description="its container-level conditions, verbatim: the sensor evaluates them "
        "once per container"
    )


class ResponseEntry(_Frozen):
    policy: Index = Field(description="index into `policies`")
    match: Mask
    exclude: Mask
    actions: tuple[Action, ...]


class PathMasks(_Frozen):
    exact: Masks = Field(description="path → selectors")
    children: Masks = Field(description="directory → selectors matching its direct children")
    recursive: Masks = Field(description="directory → selectors matching everything below it")
    any: Mask = Field(description="selectors without a path condition")


class NameMasks(_Frozen):
    exact: Masks = Field(description="process name (comm) → selectors")
    any: Mask = Field(description="selectors without a processName condition")


class InteractiveMasks(_Frozen):
    require_true: Mask
    require_false: Mask


class VolumeMasks(_Frozen):
    ignore_mounts: Mask
    ignore_files: Mask


class _TableSet(_Frozen):
    selectors: tuple[SelectorEntry, ...]
    paths: PathMasks = Field(description="file: targetFilePath; process: processExecutable")
    responses: tuple[ResponseEntry, ...]

    def masks(self) -> list[int]:
        """Every mask in the set (to check that none names a selector it doesn't have)."""
        out = [self.paths.any]
        for table in (self.paths.exact, self.paths.children, self.paths.recursive):
            out.extend(table.values())
        for row in self.responses:
            out += [row.match, row.exclude]
        return out


class ProcessTableSet(_TableSet):
    operations: dict[ProcessOperation, Mask] = Field(description="operation → selectors")
    names: NameMasks
    interactive: InteractiveMasks

    def masks(self) -> list[int]:
        return [
            *super().masks(),
            *self.operations.values(),
            *self.names.exact.values(),
            self.names.any,
            self.interactive.require_true,
            self.interactive.require_false,
        ]


class FileTableSet(_TableSet):
    operations: dict[FileOperation, Mask] = Field(description="operation → selectors")
    volumes: VolumeMasks

    def masks(self) -> list[int]:
        return [
            *super().masks(),
            *self.operations.values(),
            self.volumes.ignore_mounts,
            self.volumes.ignore_files,
        ]


class Bundle(_Frozen):
    """One node's compiled policies: the operator → sensor contract (docs/contracts.md)."""

    model_config = ConfigDict(title="Stockade bundle")
    schema_version: Literal[1] = Field(description="refused by a reader that doesn't know it")
    node: str | None = Field(description="the node's name; null when compiled without pods")
    hash: Annotated[str, Field(pattern=HASH_PATTERN)] = Field(
        description='"sha256:" + hex of the canonical bytes of everything else'
    )
    policies: tuple[PolicyEntry, ...] = Field(description="sorted by kind, namespace, name")
    process: ProcessTableSet
    file: FileTableSet

    @classmethod
    def seal(
        cls,
        node: str | None,
        policies: tuple[PolicyEntry, ...],
        process: ProcessTableSet,
        file: FileTableSet,
    ) -> Bundle:
        """The bundle of these tables, with its hash: how a bundle is made."""
        content = {
            "schemaVersion": SCHEMA_VERSION,
            "node": node,
            "policies": policies,
            "process": process,
            "file": file,
        }
        unsealed = cls.model_validate({**content, "hash": "sha256:" + "0" * 64})
        pieces = _canonical_pieces(
            unsealed.model_dump(mode="json", by_alias=True, exclude={"hash"})
        )
        return unsealed.model_copy(update={"hash": _sealed(pieces)[0]})

    @model_validator(mode="after")
    def _references(self) -> Bundle:
        """Indexes and bits point at what exists: a reader can index without checking."""
        parts: tuple[tuple[PartName, type[StrEnum]], ...] = (
            ("process", ProcessOperation),
            ("file", FileOperation),
        )
        for part, operations in parts:
            tables = self.part(part)
            count = len(tables.selectors)
            if set(tables.operations) != set(operations):
                raise ValueError(f"{part}.operations must have every {part} operation")
            for i, selector in enumerate(tables.selectors):
                if selector.bit != i:
                    raise ValueError(f"{part}.selectors[{i}] has bit {selector.bit}, not {i}")
            policies = [s.policy for s in tables.selectors] + [r.policy for r in tables.responses]
            if policies and max(policies) >= len(self.policies):
                raise ValueError(f"{part} refers to policy {max(policies)}, past `policies`")
            if any(mask >> count for mask in tables.masks()):
                raise ValueError(f"{part} has a mask with a bit past its {count} selectors")
        return self

    def part(self, name: PartName) -> ProcessTableSet | FileTableSet:
        return self.process if name == "process" else self.file

    def to_json(self) -> dict[str, Any]:
        """The bundle as a JSON object (what `encode` writes, before sorting)."""
        return self.model_dump(mode="json", by_alias=True)


def json_schema() -> dict[str, Any]:
    """The bundle's JSON Schema (`docs/bundle.schema.json`)."""
    schema = Bundle.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render_json_schema() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- canonical bytes and hash --------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _canonical_pieces(content: Mapping[str, Any]) -> dict[str, bytes]:
    """Each top-level value's canonical bytes, by key (`_joined` makes the object's)."""
    return {key: _canonical(value) for key, value in content.items()}


def _joined(pieces: Mapping[str, bytes]) -> bytes:
    """`_canonical` of the object whose values' canonical bytes are `pieces`."""
    return b"{" + b",".join(_canonical(k) + b":" + pieces[k] for k in sorted(pieces)) + b"}"


def _sealed(content: Mapping[str, bytes]) -> tuple[str, bytes]:
    """(hash, canonical bytes) of the bundle whose top-level values but the hash have the
    canonical bytes `content`: the hash is over those, the bytes are them with it."""
    digest = "sha256:" + hashlib.sha256(_joined(content)).hexdigest()
    return digest, _joined({**content, "hash": _canonical(digest)})


def entry_bytes(entry: PolicyEntry | SelectorEntry | ResponseEntry) -> bytes:
    """An entry's canonical bytes, as they appear in its bundle's."""
    return _canonical(entry.model_dump(mode="json", by_alias=True))


@dataclass(frozen=True)
class Sealed:
    """A bundle as its canonical bytes (`decode(raw)` is the `Bundle`), with the hash and
    policies the operator reads: made without a model per selector and response."""

    hash: str
    policies: tuple[PolicyEntry, ...]
    raw: bytes


SplicedPart = tuple[ProcessTableSet | FileTableSet, Sequence[bytes], Sequence[bytes]]


def seal_spliced(
    node: str | None,
    policies: Sequence[tuple[PolicyEntry, bytes]],
    process: SplicedPart,
    file: SplicedPart,
) -> Sealed:
    """The bytes of `Bundle.seal(node, policies, process, file)`, spliced: each part is
    its tables without selectors and responses, and those entries' `entry_bytes`, each
    item one or more comma-joined entries (the compiler keeps them per policy)."""
    content = {
        "schemaVersion": _canonical(SCHEMA_VERSION),
        "node": _canonical(node),
        "policies": b"[" + b",".join(raw for _, raw in policies) + b"]",
    }
    for name, (tables, selectors, responses) in (("process", process), ("file", file)):
        pieces = _canonical_pieces(tables.model_dump(mode="json", by_alias=True))
        pieces["selectors"] = b"[" + b",".join(selectors) + b"]"
        pieces["responses"] = b"[" + b",".join(responses) + b"]"
        content[name] = _joined(pieces)
    digest, raw = _sealed(content)
    return Sealed(digest, tuple(entry for entry, _ in policies), raw)


def encode(bundle: Bundle | Sealed) -> bytes:
    """The canonical bytes of a bundle: sorted keys, no whitespace, UTF-8."""
    return bundle.raw if isinstance(bundle, Sealed) else _canonical(bundle.to_json())


def content_hash(bundle: Bundle) -> str:
    """The bundle's hash: "sha256:" + hex of the canonical bytes of all but the hash."""
    content = bundle.model_dump(mode="json", by_alias=True, exclude={"hash"})
    return "sha256:" + hashlib.sha256(_canonical(content)).hexdigest()


class BundleError(ValueError):
    """A bundle that is refused; the message is one line saying why."""


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = "".join(f"{part}: " for part in [".".join(map(str, error["loc"]))] if part)
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return where + error["msg"].removeprefix("Value error, ") + more


def _version(raw: bytes | str) -> object:
    try:
        found = json.loads(raw)
    except ValueError:
        return None
    return found.get("schemaVersion") if isinstance(found, dict) else None


def decode(raw: bytes | str) -> Bundle:
    """The bundle `raw` (canonical or not) holds; BundleError unless this code could have
    written it: the schema version it knows, no unknown field, the hash of its content."""
    try:
        bundle = Bundle.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        version = _version(raw)
        if type(version) is int and version > SCHEMA_VERSION:
            raise BundleError(
                f"bundle schema version {version} is newer than this reader's ({SCHEMA_VERSION})"
            ) from None
        raise BundleError(f"not a bundle: {_first_error(exc)}") from None
    computed = content_hash(bundle)
    if computed != bundle.hash:
        raise BundleError(f"bundle content hashes to {computed}, not {bundle.hash} as it says")
    return bundle


# --- the ConfigMap -----------------------------------------------------------------

# Plain JSON under BUNDLE_KEY while small enough to read with kubectl, else gzip
# (mtime 0: same bundle, same bytes) under BUNDLE_GZIP_KEY in binaryData. Exactly
# one of the two keys is present; HASH_ANNOTATION repeats the bundle's hash.
BUNDLE_KEY = "bundle.json"
BUNDLE_GZIP_KEY = "bundle.json.gz"
HASH_ANNOTATION = "stockade.dev/bundle-hash"
GZIP_ABOVE = 64 * 1024
MAX_BYTES = 64 * 1024 * 1024  # unpacked: far above any bundle (1024 selectors per part)


def configmap_payload(bundle: Bundle | Sealed) -> tuple[dict[str, str], dict[str, str]]:
    """(data, binaryData) of the ConfigMap that carries `bundle`; annotate it with
    `{HASH_ANNOTATION: bundle.hash}`."""
    raw = encode(bundle)
    if len(raw) <= GZIP_ABOVE:
        return {BUNDLE_KEY: raw.decode()}, {}
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    return {}, {BUNDLE_GZIP_KEY: base64.b64encode(packed).decode()}


def _unpack(packed: str) -> bytes:
    try:
        gz = base64.b64decode(packed, validate=True)
    except binascii.Error as exc:
        raise BundleError(f"{BUNDLE_GZIP_KEY} is not base64: {exc}") from None
    inflate = zlib.decompressobj(wbits=31)  # gzip
    try:
        raw = inflate.decompress(gz, MAX_BYTES + 1)
    except zlib.error as exc:
        raise BundleError(f"{BUNDLE_GZIP_KEY} is not gzip: {exc}") from None
    if len(raw) > MAX_BYTES:
        raise BundleError(f"{BUNDLE_GZIP_KEY} unpacks to more than {MAX_BYTES} bytes")
    if not inflate.eof or inflate.unused_data:
        raise BundleError(f"{BUNDLE_GZIP_KEY} is truncated or has trailing bytes")
    return raw


def from_configmap(
    data: Mapping[str, str] | None,
    binary_data: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None,
) -> Bundle:
    """The bundle a ConfigMap written with `configmap_payload` carries; BundleError when it
    holds none, more than one, or one that `decode` refuses or its annotation disputes."""
    plain = (data or {}).get(BUNDLE_KEY)
    packed = (binary_data or {}).get(BUNDLE_GZIP_KEY)
    if (plain is None) == (packed is None):
        found = "both" if plain is not None else "neither"
        raise BundleError(f"want one of {BUNDLE_KEY} and {BUNDLE_GZIP_KEY}, found {found}")
    bundle = decode(plain if plain is not None else _unpack(packed or ""))
    stated = (annotations or {}).get(HASH_ANNOTATION)
    if stated is None:
        raise BundleError(f"the ConfigMap has no {HASH_ANNOTATION} annotation")
    if stated != bundle.hash:
        raise BundleError(f"bundle {bundle.hash} doesn't match its {HASH_ANNOTATION} {stated}")
    return bundle
