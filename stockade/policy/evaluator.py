"""The reference evaluator: the spec, read literally, for one operation.

Small and obviously right on purpose. The compiled tables (`tables.py`) and
the kernel are tested against it; nothing fast belongs here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from stockade.policy.document import PolicyDocument
from stockade.policy.model import (
    Action,
    FileOperation,
    FileSelector,
    Mode,
    PartName,
    ProcessOperation,
    ProcessSelector,
)
from stockade.policy.predicates import (
    PathPattern,
    Workload,
    canonical_path_problem,
    container_conditions_hold,
)

Volume = Literal["none", "mount", "file"]
OPERATIONS: dict[PartName, frozenset[str]] = {
    "process": frozenset(ProcessOperation),
    "file": frozenset(FileOperation),
}


class _Facts(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ContainerFacts(_Facts):
    id: str | None = None  # written into documents (`container.id`); no condition reads it
    name: str | None = None
    image_full_name: str | None = None
    image_name: str | None = None
    image_tag: str | None = None


class KubernetesFacts(_Facts):
    cluster_id: str | None = None
    cluster_name: str | None = None
    namespace: str | None = None
    pod_name: str | None = None
    pod_labels: dict[str, str] | None = None
    namespace_labels: dict[str, str] | None = None
    # written into documents (`orchestrator.resource.*`); no condition reads them
    pod_annotations: dict[str, str] | None = None
    pod_ip: str | None = None
    pod_owner_kind: str | None = None  # e.g. ReplicaSet: `orchestrator.resource.parent.type`


def _canonical(path: str) -> str:
    problem = canonical_path_problem(path)
    if problem:
        raise ValueError(f"path {problem}")
    return path


CanonicalPath = Annotated[str, AfterValidator(_canonical)]


class FileFacts(_Facts):
    path: CanonicalPath | None = None
    volume: Volume | None = None


class ProcessFacts(_Facts):
    executable: CanonicalPath | None = None
    name: str | None = None
    interactive: bool | None = None


class Event(_Facts):
    """One operation and what is known around it (`stockade explain`'s input)."""

    part: PartName
    operation: Annotated[list[str], Field(min_length=1)] | str
    container: ContainerFacts = ContainerFacts()
    kubernetes: KubernetesFacts = KubernetesFacts()
    file: FileFacts = FileFacts()
    process: ProcessFacts = ProcessFacts()

    @model_validator(mode="after")
    def _operations_of_part(self) -> Event:
        unknown = self.operations - OPERATIONS[self.part]
        if unknown:
            allowed = ", ".join(sorted(OPERATIONS[self.part]))
            raise ValueError(
                f"operation {sorted(unknown)} is not a {self.part} operation (one of: {allowed})"
            )
        return self

    @property
    def operations(self) -> frozenset[str]:
        """One system call can be several operations of its part."""
        ops = [self.operation] if isinstance(self.operation, str) else self.operation
        return frozenset(ops)

    def workload(self) -> Workload:
        c, k = self.container, self.kubernetes
        return Workload(
            image_full_name=c.image_full_name,
            image_name=c.image_name,
            image_tag=c.image_tag,
            cluster_id=k.cluster_id,
            cluster_name=k.cluster_name,
            namespace=k.namespace,
            pod_name=k.pod_name,
            pod_labels=k.pod_labels,
            namespace_labels=k.namespace_labels,
        )


@dataclass(frozen=True)
class Decision:
    matched_selectors: tuple[str, ...]  # in the order the policy declares them
    actions: frozenset[Action]  # what is done: in audit mode, never block
    would_block: bool = False  # audit mode: a block was asked for but not done


def _paths_match(patterns: list[str] | None, path: str | None) -> bool:
    if patterns is None:
        return True
    return path is not None and any(PathPattern.parse(p).matches(path) for p in patterns)


def _file_selector_matches(selector: FileSelector, event: Event) -> bool:
    if not _paths_match(selector.target_file_path, event.file.path):
        return False
    volume = event.file.volume
    if selector.ignore_volume_mounts and volume in (None, "mount", "file"):
        return False
    return not (selector.ignore_volume_files and volume in (None, "file"))


def _process_selector_matches(selector: ProcessSelector, event: Event) -> bool:
    proc = event.process
    if not _paths_match(selector.process_executable, proc.executable):
        return False
    if selector.process_name is not None and proc.name not in selector.process_name:
        return False
    wanted = selector.session_leader_interactive
    return wanted is None or proc.interactive == wanted


def selector_matches(selector: FileSelector | ProcessSelector, event: Event) -> bool:
    """Whether every condition of the selector holds for the event."""
    if selector.operation is not None and not event.operations & set(selector.operation):
        return False
    if not container_conditions_hold(selector.container_conditions(), event.workload()):
        return False
    if isinstance(selector, FileSelector):
        return _file_selector_matches(selector, event)
    return _process_selector_matches(selector, event)


def evaluate(document: PolicyDocument, event: Event) -> Decision:
    part = document.policy.parts().get(event.part)
    if part is None or not document.scope.holds(event.workload()):
        return Decision((), frozenset())
    matched = [s.name for s in part.selectors if selector_matches(s, event)]
    lowered = {name.lower() for name in matched}
    actions: set[Action] = set()
    for response in part.responses:
        hit = any(name.lower() in lowered for name in response.match)
        excluded = any(name.lower() in lowered for name in response.exclude or [])
        if hit and not excluded:
            actions.update(response.actions)
    if document.mode == Mode.AUDIT and Action.BLOCK in actions:
        return Decision(tuple(matched), frozenset(actions - {Action.BLOCK}), would_block=True)
    return Decision(tuple(matched), frozenset(actions))
