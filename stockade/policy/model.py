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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictBool,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError, core_schema

# Limits. Far more than the 64 selectors other products allow; bounded so that
# the apiserver can estimate the cost of the CEL rules in the CRD.
MAX_SELECTORS_PER_PART = 256
MAX_RESPONSES_PER_PART = 256
# A response may name every selector of its part.
MAX_NAMES_PER_RESPONSE = MAX_SELECTORS_PER_PART
MAX_VALUES_PER_CONDITION = 256
MAX_NAME_LENGTH = 128
# Defend for Containers' value limits: targetFilePath 255 bytes, processName 15 (TASK_COMM_LEN
# - 1, what the kernel keeps of a name), every other condition value 511 bytes.
MAX_PATH_BYTES = 255
MAX_PROCESS_NAME_BYTES = 15
MAX_VALUE_BYTES = 511

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$"
# Absolute, no empty component, a wildcard only as the whole last component, no NUL
# (no path holds one). Other control characters can be in a file's name, so they can match.
PATH_PATTERN = r"^/$|^(/[^/*\x00]+)*/([^/*\x00]+|\*|\*\*)$"
# A name the kernel can give a task: no '/' and no NUL (comm is a C string).
PROCESS_NAME_PATTERN = r"^[^/\x00]+$"
# A cluster's name or id as the operator is told it: no control characters.
CLUSTER_VALUE_PATTERN = r"^[^\x00-\x1f\x7f]+$"
IMAGE_NAME_PATTERN = r"^[a-z0-9]+([._-][a-z0-9]+)*$"
# Registry host (a DNS name or a bracketed IPv6 address, [fe80::1]), optional :port, then
# one or more path components (the distribution reference grammar, lowercase).
IMAGE_FULL_NAME_PATTERN = (
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(:[0-9]+)?(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)+$"
)
IMAGE_TAG_PATTERN = r"^[a-zA-Z0-9_][a-zA-Z0-9_.-]*$"
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
    """Annotated metadata for a condition's list: distinct (a set in the CRD), non-empty
    unless `may_be_empty` (Defend for Containers accepts `exclude: []`)."""

    what: str
    max_items: int = MAX_VALUES_PER_CONDITION
    may_be_empty: bool = False

    def validate(self, values: list[Any]) -> list[Any]:
        if not values and not self.may_be_empty:
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
        out.update(
            {
                "minItems": 0 if self.may_be_empty else 1,
                "maxItems": self.max_items,
                "x-kubernetes-list-type": "set",
            }
        )
        return out


def condition(value_type: Any, matches: str, example: str) -> Any:
    """An optional condition's pydantic Field, described from its value type's `Text`
    (what `kubectl explain` and schema-aware editors show)."""
    text = next(m for m in get_args(value_type)[1:] if isinstance(m, Text))
    limit, unit = (text.max_bytes, "bytes") if text.max_bytes else (text.max_length, "characters")
    return Field(
        default=None,
        description=f"{matches}. Each value: {text.hint}; at most {limit} {unit}. "
        f"1 to {MAX_VALUES_PER_CONDITION} distinct values; the condition holds when any one "
        f"matches. Example: {example}",
    )


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
_PATH_HINT = (
    "an absolute path; '*' (direct children) or '**' (any depth) only as the whole last "
    "component, e.g. /usr/bin/echo, /usr/sbin/*, /usr/local/**"
)
PathPattern = Annotated[
    str,
    Text(
        "path pattern",
        pattern=PATH_PATTERN,
        hint=_PATH_HINT,
        max_bytes=MAX_PATH_BYTES,
        check=_path_problem,
    ),
]
ExecutablePattern = Annotated[
    str,
    Text(
        "executable pattern",
        pattern=PATH_PATTERN,
        hint=_PATH_HINT,
        # the kernel keeps entries longer than its 255-byte path keys in a table of 511-byte
        # keys (docs/kernel.md, "Lengths")
        max_bytes=MAX_VALUE_BYTES,
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
        hint="a registry host (a DNS name or a bracketed IPv6 address), optional :port and "
        "at least one /path component, without tag, e.g. docker.io/library/nginx",
        max_bytes=MAX_VALUE_BYTES,
    ),
]
ImageName = Annotated[
    str,
    Text(
        "image name",
        pattern=IMAGE_NAME_PATTERN,
        hint="the image's last path component in lowercase, e.g. nginx",
        max_bytes=MAX_VALUE_BYTES,
    ),
]
ImageTag = Annotated[
    str,
    Text(
        "image tag",
        pattern=IMAGE_TAG_PATTERN,
        hint="letters, digits, '_', '.' and '-', not starting with '.' or '-', e.g. latest",
        max_bytes=MAX_VALUE_BYTES,
    ),
]
ClusterId = Annotated[
    str,
    Text(
        "cluster id",
        pattern=CLUSTER_VALUE_PATTERN,
        hint="no control characters",
        max_bytes=MAX_VALUE_BYTES,
    ),
]
ClusterName = Annotated[
    str,
    Text(
        "cluster name",
        pattern=CLUSTER_VALUE_PATTERN,
        hint="no control characters",
        max_bytes=MAX_VALUE_BYTES,
    ),
]
Namespace = Annotated[
    str,
    Text(
        "namespace",
        pattern=NAMESPACE_PATTERN,
        hint="a DNS label: lowercase letters, digits and '-'",
        max_bytes=MAX_VALUE_BYTES,
    ),
]
PodName = Annotated[
    str,
    Text(
        "pod name",
        pattern=POD_NAME_PATTERN,
        hint="a pod name, or a prefix ending in '*' such as nginx-pod-*",
        max_bytes=MAX_VALUE_BYTES,
    ),
]
PodLabel = Annotated[
    str,
    Text(
        "pod label",
        pattern=POD_LABEL_PATTERN,
        hint="key:value, key:prefix* or key:* (any value)",
        max_bytes=MAX_VALUE_BYTES,
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
    name: SelectorName = Field(
        description="The selector's name, which responses use in match and exclude: "
        "letters, digits, '_' and '-', starting with a letter or digit; at most "
        f"{MAX_NAME_LENGTH} characters; unique within the part, ignoring case. "
        "Example: binDirChanges"
    )
    container_image_full_name: (
        Annotated[list[ImageFullName], Values("containerImageFullName")] | None
    ) = condition(
        ImageFullName,
        "The container's image without its tag, registry host included; exact match. "
        "Not together with containerImageName",
        "[docker.io/library/nginx, registry.local:5000/team/app]",
    )
    container_image_name: Annotated[list[ImageName], Values("containerImageName")] | None = (
        condition(ImageName, "The last path component of the container's image; exact", "[nginx]")
    )
    container_image_tag: Annotated[list[ImageTag], Values("containerImageTag")] | None = condition(
        ImageTag, "The container's image tag; exact", "[latest, '1.27']"
    )
    kubernetes_cluster_id: Annotated[list[ClusterId], Values("kubernetesClusterId")] | None = (
        condition(
            ClusterId,
            "The cluster's id, the UID of its kube-system namespace; exact",
            "[b2f8c7a0-5f4e-4c1e-9a55-0d2c1b8e9f10]",
        )
    )
    kubernetes_cluster_name: (
        Annotated[list[ClusterName], Values("kubernetesClusterName")] | None
    ) = condition(
        ClusterName, "The cluster name the deployment was configured with; exact", "[production]"
    )
    kubernetes_namespace: Annotated[list[Namespace], Values("kubernetesNamespace")] | None = (
        condition(Namespace, "The pod's namespace; exact", "[shop, payments]")
    )
    kubernetes_pod_name: Annotated[list[PodName], Values("kubernetesPodName")] | None = condition(
        PodName,
        "The pod's name; exact, or a prefix when the value ends in '*'",
        "[nginx-pod-*]",
    )
    kubernetes_pod_label: Annotated[list[PodLabel], Values("kubernetesPodLabel")] | None = (
        condition(
            PodLabel,
            "One of the pod's labels, written key:value; the key exact, the value exact or a "
            "prefix ending in '*'; key:* means the label exists",
            "['app:web', 'tier:front*', 'canary:*']",
        )
    )

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


_BOOLEAN = "A YAML boolean (true or false), not a string."


class FileSelector(_Selector):
    """What file operations a selector matches; its conditions are ANDed."""

    model_config = ConfigDict(json_schema_extra=_pair_rules(IMAGE_PAIR, VOLUME_PAIR))
    operation: Annotated[list[FileOperation], Values("operation")] | None = Field(
        default=None,
        description="The file operations matched: createExecutable, modifyExecutable, "
        "createFile, modifyFile, deleteFile; absent means all of them. "
        "Example: [createExecutable, modifyExecutable]",
    )
    target_file_path: Annotated[list[PathPattern], Values("targetFilePath")] | None = condition(
        PathPattern,
        "The file operated on, as the container sees its path; case-sensitive",
        "[/etc/passwd, /usr/sbin/*, /usr/local/**]",
    )
    ignore_volume_mounts: StrictBool | None = Field(
        default=None,
        description="true: skip files on any volume mount (directories, configMaps, "
        f"secrets), i.e. not on the container's root filesystem. {_BOOLEAN} "
        "Not together with ignoreVolumeFiles. Example: true",
    )
    ignore_volume_files: StrictBool | None = Field(
        default=None,
        description="true: skip single mounted files only (a configMap or secret subPath, "
        f"/etc/hosts, /etc/resolv.conf). {_BOOLEAN} Not together with ignoreVolumeMounts. "
        "Example: true",
    )


class ProcessSelector(_Selector):
    """What process operations a selector matches; its conditions are ANDed."""

    model_config = ConfigDict(json_schema_extra=_pair_rules(IMAGE_PAIR, PROCESS_PAIR))
    operation: Annotated[list[ProcessOperation], Values("operation")] | None = Field(
        default=None,
        description="The process operations matched: fork, exec; absent means both. "
        "Example: [exec]",
    )
    process_executable: Annotated[list[ExecutablePattern], Values("processExecutable")] | None = (
        condition(
            ExecutablePattern,
            "The full path of the executable, same wildcards as targetFilePath. "
            "Not together with processName",
            "[/usr/bin/curl, /tmp/**]",
        )
    )
    process_name: Annotated[list[ProcessName], Values("processName")] | None = condition(
        ProcessName,
        "The executable's basename as the kernel keeps it (comm); exact. "
        "Not together with processExecutable",
        "[bash, nc]",
    )
    session_leader_interactive: StrictBool | None = Field(
        default=None,
        description="true: the process's session has a controlling terminal (kubectl exec "
        f"-it, not the entrypoint); false: it has none. {_BOOLEAN} Example: true",
    )


_EXCLUDE = Values("exclude", MAX_NAMES_PER_RESPONSE, may_be_empty=True)


class Response(_Model):
    """What is done when a response's selectors match."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!('block' in self.actions) || 'alert' in self.actions",
                "block needs alert in the same response",
            )
        )
    )
    match: Annotated[list[SelectorName], Values("match", MAX_NAMES_PER_RESPONSE)] = Field(
        description="Selectors of the same part; the response applies when any one matches. "
        f"1 to {MAX_NAMES_PER_RESPONSE} names. Example: [binDirChanges, etcChanges]"
    )
    exclude: Annotated[list[SelectorName], _EXCLUDE] | None = Field(
        default=None,
        description="Selectors of the same part; the response does not apply when any one "
        f"matches. 0 to {MAX_NAMES_PER_RESPONSE} names ([] means none). Example: [nginx]",
    )
    actions: Annotated[list[Action], Values("actions", 3)] = Field(
        description="What is done: log (an event document), alert (an alert document), "
        "block (the operation fails with EPERM; needs alert). Example: [alert, block]"
    )


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
    selectors: Annotated[
        list[SelectorT], Field(min_length=1, max_length=MAX_SELECTORS_PER_PART)
    ] = Field(
        description=f"1 to {MAX_SELECTORS_PER_PART} selectors: named sets of conditions that "
        "the responses refer to"
    )
    responses: Annotated[list[Response], Field(min_length=1, max_length=MAX_RESPONSES_PER_PART)] = (
        Field(
            description=f"1 to {MAX_RESPONSES_PER_PART} responses; every response that applies "
            "adds its actions, in any order"
        )
    )


FilePart = PolicyPart[FileSelector]
ProcessPart = PolicyPart[ProcessSelector]
Part = FilePart | ProcessPart
Selector = FileSelector | ProcessSelector
PartName = Literal["process", "file"]


PROCESS_PART_DESCRIPTION = "Process operations (fork, exec): selectors and responses"
FILE_PART_DESCRIPTION = "File operations (create, modify, delete): selectors and responses"


class Policy(_Model):
    """A policy in the seed's bare format: a `process` part, a `file` part, or both."""

    version: str | None = Field(
        default=None,
        description="Defend for Containers' policy schema version; accepted and ignored",
    )
    process: ProcessPart | None = Field(default=None, description=PROCESS_PART_DESCRIPTION)
    file: FilePart | None = Field(default=None, description=FILE_PART_DESCRIPTION)

    def parts(self) -> dict[PartName, Part]:
        found: dict[PartName, Part] = {}
        if self.process is not None:
            found["process"] = self.process
        if self.file is not None:
            found["file"] = self.file
        return found
