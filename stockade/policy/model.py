"""The policy language as pydantic models: the shape and every per-field rule.

`../shared/spec/policy-language.md` is the contract. These models check what a
single field can check (patterns, limits, empty values, unknown fields); the
rules that relate several fields (names referenced by responses, block needs
alert, the file-block safety rule) live in `rules.py`, so that every problem
in a policy is reported at once with its exact field path.

The models also carry the JSON-schema facts (`pattern`, `maxLength`,
`maxItems`, CEL rules) from which `crd.py` generates the CRDs: one place for
each rule the apiserver can check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError, core_schema

# Limits. Far more than the 64 selectors other products allow; bounded so that
# the apiserver can estimate the cost of the CEL rules in the CRD.
MAX_SELECTORS_PER_PART = 256
MAX_RESPONSES_PER_PART = 256
MAX_NAMES_PER_RESPONSE = 64
MAX_VALUES_PER_CONDITION = 256
MAX_NAME_LENGTH = 128
MAX_PATH_BYTES = 255
MAX_PROCESS_NAME_BYTES = 15  # TASK_COMM_LEN - 1: what the kernel keeps of a name

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$"
# Absolute, no empty component, a wildcard only as the whole last component, no NUL
# (no path holds one). Other control characters can be in a file's name, so they can match.
PATH_PATTERN = r"^/$|^(/[^/*\x00]+)*/([^/*\x00]+|\*|\*\*)$"
# A name the kernel can give a task: no '/' and no NUL (comm is a C string).
PROCESS_NAME_PATTERN = r"^[^/\x00]+$"
# A cluster's name or id as the operator is told it: no control characters.
CLUSTER_VALUE_PATTERN = r"^[^\x00-\x1f\x7f]+$"
IMAGE_NAME_PATTERN = r"^[a-z0-9]+([._-][a-z0-9]+)*$"
# Registry host (optional :port), then one or more path components (the
# distribution reference grammar, lowercase).
IMAGE_FULL_NAME_PATTERN = (
    r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(:[0-9]+)?(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)+$"
)
IMAGE_TAG_PATTERN = r"^[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}$"
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A pod name (DNS subdomain), optionally ending in `*` for a prefix match.
POD_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?|[a-z0-9][-a-z0-9.]*\*|\*)$"
# `key:value`; key is a label key (optional DNS prefix + `/`), value a label
# value, a prefix ending in `*`, or `*` alone.
POD_LABEL_PATTERN = (
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?"
    r":([a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?|[a-zA-Z0-9][-a-zA-Z0-9_.]*\*|\*)?$"
)


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


class _Checked:
    """Annotated metadata whose `validate` runs after pydantic's own type checks."""

    def validate(self, value: Any) -> Any:
        raise NotImplementedError

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.validate, handler(source))


@dataclass(frozen=True)
class Text(_Checked):
    """Annotated metadata for a string: a human error message and its JSON-schema facts.

    `check` returns an error message for rules a regular expression can't say
    (it runs after the pattern matched).
    """

    what: str
    pattern: str | None = None
    hint: str = ""
    max_length: int = 253
    max_bytes: int | None = None
    check: Callable[[str], str | None] | None = None

    def validate(self, value: str) -> str:
        what, limit = self.what, self.max_bytes or self.max_length
        if value == "":
            raise _fail("empty", f"{what} must not be empty")
        if "\0" in value:  # every pattern refuses it too, so the CRD agrees
            raise _fail("nul", f"{value!r} is not a valid {what}: it contains a NUL byte")
        size = len(value.encode())
        if self.max_bytes is not None and size > self.max_bytes:
            raise _fail("too_long", f"{what} is {size} bytes long; at most {limit} allowed")
        if len(value) > limit:
            raise _fail("too_long", f"{what} is {len(value)} characters; at most {limit}")
        if self.pattern is not None and not re.match(self.pattern, value):
            explained = f": {self.hint}" if self.hint else ""
            raise _fail("pattern", f"{value!r} is not a valid {what}{explained}")
        problem = self.check(value) if self.check else None
        if problem:
            raise _fail("invalid", f"{value!r} is not a valid {what}: {problem}")
        return value

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        limit = self.max_bytes or self.max_length
        out: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": limit}
        if self.pattern:
            out["pattern"] = self.pattern
        return out


@dataclass(frozen=True)
class Values(_Checked):
    """Annotated metadata for a condition's list: non-empty, distinct (a set in the CRD)."""

    what: str
    max_items: int = MAX_VALUES_PER_CONDITION

    def validate(self, values: list[Any]) -> list[Any]:
        if not values:
            raise _fail("empty", f"{self.what} must not be an empty list; give a value or drop it")
        if len(values) > self.max_items:
            raise _fail(
                "too_many", f"{self.what} has {len(values)} entries; at most {self.max_items}"
            )
        seen: set[Any] = set()
        for value in values:
            if value in seen:
                raise _fail("duplicate", f"{self.what} lists {str(value)!r} twice")
            seen.add(value)
        return values

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        out = dict(handler(schema))
        out.update({"minItems": 1, "maxItems": self.max_items, "x-kubernetes-list-type": "set"})
        return out


def _path_problem(value: str) -> str | None:
    parts = value.split("/")[1:]
    if any(part in (".", "..") for part in parts):
        return "'.' and '..' are not allowed; write the path as the kernel resolves it"
    return None


SelectorName = Annotated[
    str,
    Text(
        "selector name",
        pattern=NAME_PATTERN,
        hint="letters, digits, '_' and '-', starting with a letter or digit",
        max_length=MAX_NAME_LENGTH,
    ),
]
PathPattern = Annotated[
    str,
    Text(
        "path pattern",
        pattern=PATH_PATTERN,
        hint="an absolute path; '*' (direct children) or '**' (any depth) only as the "
        "whole last component, e.g. /usr/bin/echo, /usr/sbin/*, /usr/local/**",
        max_bytes=MAX_PATH_BYTES,
        check=_path_problem,
    ),
]
ProcessName = Annotated[
    str,
    Text(
        "process name",
        hint="the executable's basename, without '/'",
        pattern=PROCESS_NAME_PATTERN,
        max_bytes=MAX_PROCESS_NAME_BYTES,
    ),
]
ImageFullName = Annotated[
    str,
    Text(
        "image full name",
        pattern=IMAGE_FULL_NAME_PATTERN,
        hint="a registry host, optional :port and at least one /path component, without tag, "
        "e.g. docker.io/library/nginx",
        max_length=255,
    ),
]
ImageName = Annotated[
    str,
    Text(
        "image name",
        pattern=IMAGE_NAME_PATTERN,
        hint="the image's last path component in lowercase, e.g. nginx",
        max_length=128,
    ),
]
ImageTag = Annotated[
    str,
    Text(
        "image tag",
        pattern=IMAGE_TAG_PATTERN,
        hint="letters, digits, '_', '.' and '-', at most 128, e.g. latest",
        max_length=128,
    ),
]
ClusterId = Annotated[
    str,
    Text(
        "cluster id",
        pattern=CLUSTER_VALUE_PATTERN,
        hint="no control characters",
        max_length=128,
    ),
]
ClusterName = Annotated[
    str,
    Text(
        "cluster name",
        pattern=CLUSTER_VALUE_PATTERN,
        hint="no control characters",
        max_length=253,
    ),
]
Namespace = Annotated[
    str,
    Text(
        "namespace",
        pattern=NAMESPACE_PATTERN,
        hint="a DNS label: lowercase letters, digits and '-'",
        max_length=63,
    ),
]
PodName = Annotated[
    str,
    Text(
        "pod name",
        pattern=POD_NAME_PATTERN,
        hint="a pod name, or a prefix ending in '*' such as nginx-pod-*",
        max_length=254,
    ),
]
PodLabel = Annotated[
    str,
    Text(
        "pod label",
        pattern=POD_LABEL_PATTERN,
        hint="key:value, key:prefix* or key:* (any value)",
        max_length=317,
    ),
]


class FileOperation(StrEnum):
    CREATE_EXECUTABLE = "createExecutable"
    MODIFY_EXECUTABLE = "modifyExecutable"
    CREATE_FILE = "createFile"
    MODIFY_FILE = "modifyFile"
    DELETE_FILE = "deleteFile"


class ProcessOperation(StrEnum):
    FORK = "fork"
    EXEC = "exec"


class Action(StrEnum):
    LOG = "log"
    ALERT = "alert"
    BLOCK = "block"


class Mode(StrEnum):
    ENFORCE = "enforce"
    AUDIT = "audit"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in rules]}


# The conditions on the container and its pod, shared by both parts.
ContainerCondition = Literal[
    "containerImageFullName",
    "containerImageName",
    "containerImageTag",
    "kubernetesClusterId",
    "kubernetesClusterName",
    "kubernetesNamespace",
    "kubernetesPodName",
    "kubernetesPodLabel",
]
CONTAINER_CONDITIONS: tuple[ContainerCondition, ...] = get_args(ContainerCondition)


class _Selector(_Model):
    name: SelectorName
    container_image_full_name: (
        Annotated[list[ImageFullName], Values("containerImageFullName")] | None
    ) = None
    container_image_name: Annotated[list[ImageName], Values("containerImageName")] | None = None
    container_image_tag: Annotated[list[ImageTag], Values("containerImageTag")] | None = None
    kubernetes_cluster_id: Annotated[list[ClusterId], Values("kubernetesClusterId")] | None = None
    kubernetes_cluster_name: (
        Annotated[list[ClusterName], Values("kubernetesClusterName")] | None
    ) = None
    kubernetes_namespace: Annotated[list[Namespace], Values("kubernetesNamespace")] | None = None
    kubernetes_pod_name: Annotated[list[PodName], Values("kubernetesPodName")] | None = None
    kubernetes_pod_label: Annotated[list[PodLabel], Values("kubernetesPodLabel")] | None = None

    def conditions(self) -> dict[str, Any]:
        """The conditions this selector sets, by their policy-language names."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude={"name"})

    def container_conditions(self) -> dict[ContainerCondition, list[str]]:
        """The conditions that only depend on the container and its pod."""
        found = self.conditions()
        return {k: found[k] for k in CONTAINER_CONDITIONS if k in found}


# Conditions that can't both be in one selector.
IMAGE_PAIR = ("containerImageFullName", "containerImageName")
VOLUME_PAIR = ("ignoreVolumeMounts", "ignoreVolumeFiles")
PROCESS_PAIR = ("processExecutable", "processName")
FORBIDDEN_PAIRS = (IMAGE_PAIR, VOLUME_PAIR, PROCESS_PAIR)


def pair_message(pair: tuple[str, str]) -> str:
    return f"{pair[0]} and {pair[1]} can't both be in one selector"


def _pair_rules(*pairs: tuple[str, str]) -> dict[str, Any]:
    return _cel(*((f"!(has(self.{a}) && has(self.{b}))", pair_message((a, b))) for a, b in pairs))


class FileSelector(_Selector):
    model_config = ConfigDict(json_schema_extra=_pair_rules(IMAGE_PAIR, VOLUME_PAIR))
    operation: Annotated[list[FileOperation], Values("operation")] | None = None
    target_file_path: Annotated[list[PathPattern], Values("targetFilePath")] | None = None
    ignore_volume_mounts: bool | None = None
    ignore_volume_files: bool | None = None


class ProcessSelector(_Selector):
    model_config = ConfigDict(json_schema_extra=_pair_rules(IMAGE_PAIR, PROCESS_PAIR))
    operation: Annotated[list[ProcessOperation], Values("operation")] | None = None
    process_executable: Annotated[list[PathPattern], Values("processExecutable")] | None = None
    process_name: Annotated[list[ProcessName], Values("processName")] | None = None
    session_leader_interactive: bool | None = None


class Response(_Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!('block' in self.actions) || 'alert' in self.actions",
                "block needs alert in the same response",
            )
        )
    )
    match: Annotated[list[SelectorName], Values("match", MAX_NAMES_PER_RESPONSE)]
    exclude: Annotated[list[SelectorName], Values("exclude", MAX_NAMES_PER_RESPONSE)] | None = None
    actions: Annotated[list[Action], Values("actions", 3)]


def _names_exist_rule(field: str) -> tuple[str, str]:
    """CEL: every name in responses[].<field> is a selector of the part, ignoring case.

    A naive nested search (responses x names x selectors) exceeds the
    apiserver's CEL cost budget 28-fold at our limits. Instead the selector
    names become a map once (bound by the one-element-list trick, as CRD
    rules have no cel.bind) and each lookup costs O(1). transformMapEntry
    needs CEL's two-variable comprehensions (checked on Kubernetes 1.35).
    """
    names = "[self.selectors.transformMapEntry(i, s, {s.name.lowerAscii(): true})]"
    check = f"r.{field}.all(n, n.lowerAscii() in names)"
    if field != "match":
        check = f"!has(r.{field}) || {check}"
    rule = f"{names}.all(names, self.responses.all(r, {check}))"
    return rule, f"every name in responses[].{field} must be a selector of the same part"


_PART_RULES = _cel(
    _names_exist_rule("match"),
    _names_exist_rule("exclude"),
)


SelectorT = TypeVar("SelectorT", FileSelector, ProcessSelector)


class PolicyPart(_Model, Generic[SelectorT]):
    """One part of a policy: its selectors and the responses that name them."""

    model_config = ConfigDict(json_schema_extra=_PART_RULES)
    selectors: Annotated[list[SelectorT], Field(min_length=1, max_length=MAX_SELECTORS_PER_PART)]
    responses: Annotated[list[Response], Field(min_length=1, max_length=MAX_RESPONSES_PER_PART)]


FilePart = PolicyPart[FileSelector]
ProcessPart = PolicyPart[ProcessSelector]
Part = FilePart | ProcessPart
Selector = FileSelector | ProcessSelector
PartName = Literal["process", "file"]


class Policy(_Model):
    """A policy in the seed's bare format: a `process` part, a `file` part, or both."""

    process: ProcessPart | None = None
    file: FilePart | None = None

    def parts(self) -> dict[PartName, Part]:
        found: dict[PartName, Part] = {}
        if self.process is not None:
            found["process"] = self.process
        if self.file is not None:
            found["file"] = self.file
        return found
