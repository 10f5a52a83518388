"""The Kubernetes resources: ContainerPolicy and ClusterContainerPolicy.

Both carry the policy language's parts directly under `spec`, plus a mode and
a scope. `spec.mode` has no schema default on purpose: a default written by
the apiserver would show as a permanent diff in Argo CD and Flux; the code
reads a missing mode as `enforce`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from stockade.policy.model import (
    FILE_PART_DESCRIPTION,
    PROCESS_PART_DESCRIPTION,
    FilePart,
    Mode,
    Policy,
    ProcessPart,
    Text,
    _cel,
    _Model,
)

GROUP = "stockade.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

LabelKey = Annotated[
    str,
    Text(
        "label key",
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$",
        hint="an optional DNS prefix and '/', then letters, digits, '-', '_' and '.'",
        max_length=317,
    ),
]
LabelValue = Annotated[
    str,
    Field(max_length=63, pattern=r"^(([a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?)?)$"),
]


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(_Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0"
                " : !has(self.values) || size(self.values) == 0",
                "In and NotIn need values; Exists and DoesNotExist take none",
            )
        )
    )
    key: LabelKey = Field(description="The label key. Example: app.kubernetes.io/name")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist")
    values: Annotated[list[LabelValue], Field(max_length=256)] | None = Field(
        default=None,
        description="Label values for In and NotIn (up to 256); none for Exists and "
        "DoesNotExist. Example: [web, api]",
    )

    def holds(self, labels: dict[str, str]) -> bool:
        match self.operator:
            case SelectorOperator.IN:
                return self.key in labels and labels[self.key] in (self.values or [])
            case SelectorOperator.NOT_IN:
                return self.key not in labels or labels[self.key] not in (self.values or [])
            case SelectorOperator.EXISTS:
                return self.key in labels
            case SelectorOperator.DOES_NOT_EXIST:
                return self.key not in labels


class LabelSelector(_Model):
    """A standard Kubernetes label selector; empty selects everything."""

    match_labels: Annotated[dict[str, LabelValue], Field(max_length=64)] | None = Field(
        default=None,
        description="Labels that must all have these values (up to 64). Example: {app: web}",
    )
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=64)] | None = (
        Field(default=None, description="Requirements that must all hold (up to 64)")
    )

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in (self.match_labels or {}).items():
            if labels.get(key) != value:
                return False
        return all(req.holds(labels) for req in self.match_expressions or [])


_SPEC_RULE = _cel(
    ("has(self.process) || has(self.file)", "a policy needs a process part, a file part or both")
)


class ContainerPolicySpec(_Model):
    model_config = ConfigDict(json_schema_extra=_SPEC_RULE)
    mode: Mode | None = Field(
        default=None, description="enforce (the default when absent) or audit"
    )
    pod_selector: LabelSelector | None = Field(
        default=None, description="Pods of this namespace the policy applies to; empty = all"
    )
    process: ProcessPart | None = Field(default=None, description=PROCESS_PART_DESCRIPTION)
    file: FilePart | None = Field(default=None, description=FILE_PART_DESCRIPTION)

    def policy(self) -> Policy:
        return Policy(process=self.process, file=self.file)


class ClusterContainerPolicySpec(ContainerPolicySpec):
    model_config = ConfigDict(json_schema_extra=_SPEC_RULE)
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces the policy applies to; empty = all"
    )


class ObjectMeta(BaseModel):
    """The part of metadata Stockade reads; everything else passes through."""

    model_config = ConfigDict(alias_generator=None, extra="allow", frozen=True)
    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: str | None = None
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = {}


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Model):
    """metav1.Condition, as kstatus and GitOps tools read it."""

    type: Annotated[str, Field(max_length=316)] = Field(description="Ready")
    status: ConditionStatus = Field(description="True, False or Unknown")
    reason: Annotated[str, Field(max_length=1024)] = Field(description="Why, in one CamelCase word")
    message: Annotated[str, Field(max_length=32768)] = Field(
        default="", description="Why, for a human"
    )
    last_transition_time: datetime = Field(description="When status last changed")
    observed_generation: int | None = Field(
        default=None, description="The generation this condition describes"
    )


class NodesStatus(_Model):
    targeted: int = Field(description="Nodes with at least one pod this policy selects")
    applied: int = Field(description="Targeted nodes whose sensor runs this generation")
    summary: str = Field(description="applied/targeted, for kubectl get")
    modes: dict[str, int] = Field(
        default={}, description="Applied nodes per enforcement mode (lsm, fmodret, kill, observe)"
    )


class CountsStatus(_Model):
    blocked: int = Field(default=0, description="Operations blocked")
    alerted: int = Field(default=0, description="Alerts raised")
    logged: int = Field(default=0, description="Events logged")


class PolicyStatus(_Model):
    """Written by the operator: where the policy applies and what it did."""

    observed_generation: int | None = Field(
        default=None, description="The generation this status describes"
    )
    mode: Mode | None = Field(default=None, description="The mode in force")
    selectors: int | None = Field(default=None, description="Selectors in both parts")
    nodes: NodesStatus | None = Field(default=None, description="Where the policy applies")
    counts: CountsStatus | None = Field(
        default=None, description="Totals over every node and generation"
    )
    conditions: (
        Annotated[
            list[Condition],
            Field(
                max_length=16,
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["type"],
                },
            ),
        ]
        | None
    ) = Field(default=None, description="Ready: whether every targeted node runs this generation")


class _Manifest(_Model):
    kind_name: ClassVar[str]
    api_version: Literal["stockade.dev/v1alpha1"]
    metadata: ObjectMeta
    status: dict[str, Any] | None = None  # written by the operator, not validated here


class ContainerPolicy(_Manifest):
    kind_name: ClassVar[str] = "ContainerPolicy"
    kind: Literal["ContainerPolicy"]
    spec: ContainerPolicySpec


class ClusterContainerPolicy(_Manifest):
    kind_name: ClassVar[str] = "ClusterContainerPolicy"
    kind: Literal["ClusterContainerPolicy"]
    spec: ClusterContainerPolicySpec


Manifest = ContainerPolicy | ClusterContainerPolicy
MANIFEST_KINDS: dict[str, type[ContainerPolicy] | type[ClusterContainerPolicy]] = {
    "ContainerPolicy": ContainerPolicy,
    "ClusterContainerPolicy": ClusterContainerPolicy,
}
