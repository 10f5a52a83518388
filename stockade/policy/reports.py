"""NodePolicyReport: what a node's sensor reports back (one per node, named after it).

The sensor writes it; the operator reads it to fill in each policy's status.
Counters are cumulative per (policy UID, generation) for the life of one
sensor instance (`sensor.instanceId`, new on every sensor start): a new
instance id tells the operator that counters restarted from zero, so it adds
the old instance's last counters to its baseline instead of going backwards.
An entry, once dropped from `policies` (its generation left the bundle), does
not come back within the same instance.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from stockade.policy.model import _Model
from stockade.policy.resources import ObjectMeta

KIND = "NodePolicyReport"
PLURAL = "nodepolicyreports"


class EnforcementMode(StrEnum):
    LSM = "lsm"  # BPF LSM: block denies before the operation happens
    FMODRET = "fmodret"  # fmod_ret on security_* functions (no BPF LSM): denies before it too
    KILL = "kill"  # tracepoints: block kills the process (file operations already happened)
    OBSERVE = "observe"  # no enforcement: events and alerts only


class Sensor(_Model):
    """The sensor that wrote this report."""

    instance_id: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        description="New on every sensor start; a change means counters restarted from zero"
    )
    version: Annotated[str, Field(max_length=64)] = Field(
        default="", description="The sensor's Stockade version"
    )
    kernel_version: Annotated[str, Field(max_length=256)] = Field(
        default="", description="The node's kernel release"
    )
    mode: EnforcementMode = Field(description="lsm, fmodret, kill or observe")
    mode_reason: Annotated[str, Field(max_length=1024)] = Field(
        default="", description="Why this mode: what the sensor's probe found"
    )
    heartbeat_time: datetime = Field(description="Last time the sensor wrote this report")


class AppliedBundle(_Model):
    hash: Annotated[str, Field(max_length=80)] = Field(description="sha256:... of the bundle")
    applied_time: datetime | None = Field(default=None, description="When it took effect")


class PolicyCounters(_Model):
    uid: Annotated[str, Field(max_length=64)] = Field(description="The policy's UID")
    generation: int = Field(ge=0, description="The policy's generation these counters are of")
    kind: Annotated[str, Field(max_length=64)] = Field(
        default="", description="ContainerPolicy or ClusterContainerPolicy"
    )
    namespace: Annotated[str, Field(max_length=63)] | None = Field(
        default=None, description="A ContainerPolicy's namespace"
    )
    name: Annotated[str, Field(max_length=253)] = Field(default="", description="The policy")
    blocked: int = Field(default=0, ge=0, description="Operations blocked")
    alerted: int = Field(default=0, ge=0, description="Alerts raised")
    logged: int = Field(default=0, ge=0, description="Events logged")


class NodeError(_Model):
    time: datetime = Field(description="When it happened")
    message: Annotated[str, Field(max_length=4096)] = Field(description="What went wrong")
    policy_uid: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="The policy concerned; absent for node-wide errors"
    )


class NodePolicyReportBody(_Model):
    """Everything below metadata: what the CRD's schema validates."""

    sensor: Sensor
    node_uid: Annotated[str, Field(max_length=64)] | None = Field(
        default=None,
        description="The Node's metadata.uid; a report left from an earlier Node of the"
        " same name (another uid) is ignored",
    )
    bundle: AppliedBundle | None = Field(default=None, description="The bundle in force")
    policies: Annotated[list[PolicyCounters], Field(max_length=4096)] = Field(
        default=[], description="Every policy of the applied bundle, with its counters"
    )
    dropped_events: int = Field(default=0, ge=0, description="Events lost since sensor start")
    errors: Annotated[list[NodeError], Field(max_length=32)] = Field(
        default=[], description="Current errors (empty when healthy)"
    )


class NodePolicyReport(NodePolicyReportBody):
    api_version: Literal["stockade.dev/v1alpha1"] = "stockade.dev/v1alpha1"
    kind: Literal["NodePolicyReport"] = "NodePolicyReport"
    metadata: ObjectMeta
