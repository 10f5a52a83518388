"""What the operator keeps of each watched object: only what scoping and status need."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from stockade.policy.compiler import Pod
from stockade.policy.document import PolicyDocument
from stockade.policy.loader import YamlDocument, load_document
from stockade.policy.model import Action
from stockade.policy.reports import NodePolicyReport
from stockade.policy.resources import PolicyStatus
from stockade.policy.rules import Severity

# (kind, namespace or "", name): a policy's identity across generations.
PolicyKey = tuple[str, str, str]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]
    phase: str

    def pod(self) -> Pod:
        return Pod(self.namespace, self.name, dict(self.labels))


def pod_ref(body: Mapping[str, Any]) -> tuple[str, PodRef] | None:
    """(node, pod) for a pod bound to a node that may still run containers."""
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    node = spec.get("nodeName")
    phase = status.get("phase") or "Pending"
    if not node or phase in TERMINAL_PHASES:
        return None
    labels = tuple(sorted((meta.get("labels") or {}).items()))
    return node, PodRef(meta.get("namespace", ""), meta["name"], labels, phase)


@dataclass(frozen=True)
class PolicyRecord:
    kind: str
    namespace: str  # "" for a ClusterContainerPolicy
    name: str
    uid: str
    generation: int
    document: PolicyDocument | None  # None when invalid
    errors: tuple[str, ...]  # "field.path: message", when invalid
    status: PolicyStatus | None  # as stored on the object
    created: str = ""  # metadata.creationTimestamp (RFC 3339, UTC: sorts as time)
    version: str = ""  # metadata.resourceVersion: the precondition of a status write

    @property
    def key(self) -> PolicyKey:
        return (self.kind, self.namespace, self.name)

    @property
    def fit_order(self) -> tuple[bool, str, str, str]:
        """The order in which policies get room in a bundle that can't hold them all.

        Cluster policies first (a namespace's policies must never crowd out a
        cluster-wide one), then the oldest (a new policy never displaces one
        already in force), then by namespace and name.
        """
        return (bool(self.namespace), self.created, self.namespace, self.name)

    @property
    def label(self) -> str:
        """`namespace/name@generation` (`name@generation` when cluster-scoped)."""
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{where}{self.name}@{self.generation}"

    @property
    def blocks(self) -> bool:
        if self.document is None:
            return False
        return any(
            Action.BLOCK in response.actions
            for part in self.document.policy.parts().values()
            for response in part.responses
        )


def policy_record(
    body: Mapping[str, Any],
    parsed: MutableMapping[tuple[str, int], PolicyDocument] | None = None,
) -> PolicyRecord:
    """Validate a policy as the CLI does; what the apiserver can't check becomes `errors`.

    `parsed`: valid documents by (uid, generation), reused and added to. A status
    write (the operator's own, after each pass) changes neither, nor the spec; a new
    document object would have every node scope and compile the policy afresh (the
    verdicts and the compile cache go by document object).
    """
    meta = body["metadata"]
    uid, generation = meta.get("uid", ""), int(meta.get("generation") or 0)
    identity = (uid, generation) if parsed is not None and uid and generation else None
    document = parsed.get(identity) if parsed is not None and identity is not None else None
    errors: tuple[str, ...] = ()
    if document is None:
        data = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        loaded = load_document(YamlDocument(data, line=0), source=meta["name"])
        errors = tuple(
            f"{f.path}: {f.message}" for f in loaded.findings if f.severity == Severity.ERROR
        )
        if loaded.valid:
            document = loaded.document
            if parsed is not None and identity is not None and document is not None:
                parsed[identity] = document
        elif not errors:
            errors = ("spec: not a valid policy",)
    status: PolicyStatus | None = None
    try:
        status = PolicyStatus.model_validate(body.get("status") or {})
    except ValidationError:
        status = None  # not ours or from an older shape: rewritten on the next status write
    return PolicyRecord(
        kind=body["kind"],
        namespace=meta.get("namespace") or "",
        name=meta["name"],
        uid=uid,
        generation=generation,
        document=document,
        errors=errors,
        status=status,
        created=str(meta.get("creationTimestamp") or ""),
        version=str(meta.get("resourceVersion") or ""),
    )


def node_report(body: Mapping[str, Any]) -> NodePolicyReport:
    """Raises ValidationError for a report the CRD schema should have refused."""
    return NodePolicyReport.model_validate(
        {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
    )
