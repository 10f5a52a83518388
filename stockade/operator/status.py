"""A policy's status from what the operator compiled and what the sensors report.

Pure functions: the reconciler passes everything in, so the same inputs
give the same status (and the reconciler writes nothing when it is equal to
what is stored). Messages carry no timestamps for the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from stockade.operator.objects import PolicyRecord
from stockade.policy.model import Mode
from stockade.policy.reports import EnforcementMode, NodePolicyReport
from stockade.policy.resources import (
    Condition,
    ConditionStatus,
    CountsStatus,
    NodesStatus,
    PolicyStatus,
)

READY = "Ready"
# kstatus (Flux health checks, `kubectl wait`-style tooling) reads these two, not Ready:
# Reconciling=True is in progress, Stalled=True won't resolve without a user; neither
# (Applied, NoTargets) is Current.
RECONCILING = "Reconciling"
STALLED = "Stalled"
# the sensor modes where block denies before the operation happens
_DENYING_MODES = frozenset({EnforcementMode.LSM.value, EnforcementMode.FMODRET.value})
LISTED = 5  # nodes named in a message before "and N more"
BUNDLE_TOO_LARGE = "BundleTooLarge"
COMPILING = "Compiling"
WRITE_FAILED = "WriteFailed"
SENSOR_SILENT = "SensorSilent"
# The reason shown when a policy's nodes have problems of several kinds: the first.
PROBLEM_ORDER = (BUNDLE_TOO_LARGE, COMPILING, WRITE_FAILED)
IN_PROGRESS = frozenset({COMPILING, WRITE_FAILED, "Applying"})
# SensorSilent too: after several missed heartbeats only someone bringing the sensor
# (or its node) back resolves it, as with NodeErrors.
NEEDS_A_USER = frozenset({"Invalid", BUNDLE_TOO_LARGE, SENSOR_SILENT, "NodeErrors"})
AFTERWORD = {
    BUNDLE_TOO_LARGE: "the other policies there are in their bundles",
    COMPILING: "those nodes keep their previous bundle",
    WRITE_FAILED: "those nodes keep their previous bundle; retried with backoff",
}


@dataclass(frozen=True)
class NodeProblem:
    """Why a targeted node's bundle doesn't hold a policy's generation (a PROBLEM_ORDER reason)."""

    reason: str
    detail: str


def _listed(items: Sequence[str], separator: str = ", ") -> str:
    shown = separator.join(items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


def _lag_reason(report: NodePolicyReport | None, record: PolicyRecord) -> str:
    if report is None:
        return "no NodePolicyReport (is the sensor running there?)"
    generations = sorted(c.generation for c in report.policies if c.uid == record.uid)
    if generations:
        return f"its sensor runs generation {generations[-1]}"
    applied = report.bundle.hash if report.bundle else "none"
    return f"its sensor has not applied a bundle with this policy yet (applied: {applied})"


def _conditions(
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    previous: PolicyStatus | None,
    now: datetime,
) -> list[Condition]:
    """Ready, and Reconciling or Stalled when `reason` says so; each keeps its previous
    transition time unless its status flips (an absent condition counts as False)."""
    types = [READY]
    if reason in IN_PROGRESS:
        types.append(RECONCILING)
    if reason in NEEDS_A_USER:
        types.append(STALLED)
    out = []
    for type_ in types:
        flag = status if type_ == READY else ConditionStatus.TRUE
        out.append(_condition(type_, flag, reason, message, generation, previous, now))
    return out


def _condition(
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    previous: PolicyStatus | None,
    now: datetime,
) -> Condition:
    before = (
        next((c for c in (previous.conditions or []) if c.type == type_), None)
        if previous
        else None
    )
    since = before.last_transition_time if before and before.status == status else now
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )


def policy_status(
    record: PolicyRecord,
    *,
    targeted: Sequence[str],
    bundled: set[str],
    node_problems: Mapping[str, NodeProblem],
    reports: Mapping[str, NodePolicyReport],
    silent: Mapping[str, str],
    counts: CountsStatus,
    previous: PolicyStatus | None,
    now: datetime,
) -> PolicyStatus:
    """The status of a policy.

    `targeted`: nodes with a pod in its scope; `bundled`: those whose written
    bundle holds this generation; `node_problems`: nodes whose bundle can't hold
    it, can't be compiled or written, with why; `reports`: the NodePolicyReports by node;
    `silent`: nodes whose sensor stopped reporting, with since when (`heartbeats`);
    `counts`: summed over nodes (`ledger`).
    """

    def ready(status: ConditionStatus, reason: str, message: str) -> list[Condition]:
        return _conditions(status, reason, message, record.generation, previous, now)

    base = {"observed_generation": record.generation, "counts": counts}
    doc = record.document
    if doc is None:
        message = "the operator refused this generation: " + "; ".join(record.errors)
        return PolicyStatus(**base, conditions=ready(ConditionStatus.FALSE, "Invalid", message))
    selectors = sum(len(p.selectors) for p in doc.policy.parts().values())
    applied = [
        n
        for n in targeted
        if (r := reports.get(n)) is not None
        and any(c.uid == record.uid and c.generation == record.generation for c in r.policies)
    ]
    modes: dict[str, int] = {}
    for n in applied:
        mode = reports[n].sensor.mode.value
        modes[mode] = modes.get(mode, 0) + 1
    nodes = NodesStatus(
        targeted=len(targeted),
        applied=len(applied),
        summary=f"{len(applied)}/{len(targeted)}",
        modes=dict(sorted(modes.items())),
    )
    common = {**base, "mode": doc.mode, "selectors": selectors, "nodes": nodes}

    if not targeted:  # nothing to apply is done, not failed: kstatus reads Ready=False
        conditions = ready(  # as in progress, so a GitOps wait would never end
            ConditionStatus.TRUE,
            "NoTargets",
            "no pod bound to a node is in this policy's scope; check "
            + ("namespaceSelector and podSelector" if not record.namespace else "podSelector")
            + " against the pods' labels",
        )
        return PolicyStatus(**common, conditions=conditions)

    problems = sorted(
        (PROBLEM_ORDER.index(p.reason), n) for n in targeted if (p := node_problems.get(n))
    )
    unbundled = sorted(n for n in targeted if n not in bundled and n not in node_problems)
    if problems or unbundled:
        reason = PROBLEM_ORDER[problems[0][0]] if problems else COMPILING
        parts = [f"{n}: {node_problems[n].detail}" for _, n in problems[:LISTED]]
        if len(problems) > LISTED:
            parts.append(f"and {len(problems) - LISTED} more nodes")
        if unbundled:
            parts.append(f"not yet in the bundle of {_listed(unbundled)}")
        conditions = ready(
            ConditionStatus.FALSE, reason, "; ".join(parts) + f" ({AFTERWORD[reason]})"
        )
        return PolicyStatus(**common, conditions=conditions)

    # Before anything read from the reports: a silent node's report is stale.
    quiet = [f"{n}: {silent[n]}" for n in targeted if n in silent]
    if quiet:
        conditions = ready(
            ConditionStatus.FALSE,
            SENSOR_SILENT,
            f"sensors silent: {_listed(quiet, '; ')}; is the sensor running, and can it reach"
            " the apiserver? Until it reports, what it enforces there is unknown",
        )
        return PolicyStatus(**common, conditions=conditions)

    errors: list[str] = []
    for n in targeted:
        report = reports.get(n)
        for error in report.errors if report else []:
            if error.policy_uid in (None, record.uid):
                errors.append(f"{n}: {error.message}")
    if errors:
        conditions = ready(
            ConditionStatus.FALSE, "NodeErrors", "sensors report errors: " + _listed(errors, "; ")
        )
        return PolicyStatus(**common, conditions=conditions)

    lagging = [n for n in targeted if n not in applied]
    if lagging:
        why = "; ".join(f"{n}: {_lag_reason(reports.get(n), record)}" for n in lagging[:LISTED])
        more = f" and {len(lagging) - LISTED} more" if len(lagging) > LISTED else ""
        conditions = ready(
            ConditionStatus.FALSE,
            "Applying",
            f"applied on {len(applied)}/{len(targeted)} nodes; waiting for {why}{more}",
        )
        return PolicyStatus(**common, conditions=conditions)

    message = f"applied on {len(applied)}/{len(targeted)} nodes"
    cannot_deny = sum(v for k, v in modes.items() if k not in _DENYING_MODES)
    if record.blocks and doc.mode == Mode.ENFORCE and cannot_deny:
        message += (
            f"; {cannot_deny} of them can't deny before the operation (neither BPF LSM nor"
            " fmod_ret): there"
            " block kills the process, or only alerts in observe mode"
        )
    return PolicyStatus(**common, conditions=ready(ConditionStatus.TRUE, "Applied", message))
