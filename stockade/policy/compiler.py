"""The compiler: the policies that matter to one node → one bundle.

The bundle is the operator → sensor contract (`bundle.py`, `docs/contracts.md`). Selectors
get bit positions per part; operations become masks; path and executable
patterns become lookup tables (exact, direct children, recursive prefix);
responses become rows of (match mask, exclude mask, actions, policy).
Conditions on the container and its pod, and the policy's own scope, stay
predicates: the sensor evaluates them once per container into that
container's selector mask (`tables.container_masks`).

Bit i of a mask is selector i. The bundle is deterministic: the same inputs
give the same bytes and the same hash.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade.policy.bundle import (
    Bundle,
    FileTableSet,
    InteractiveMasks,
    NameMasks,
    PathMasks,
    PolicyEntry,
    PolicyScope,
    ProcessTableSet,
    ResponseEntry,
    Sealed,
    SelectorEntry,
    SplicedPart,
    VolumeMasks,
    entry_bytes,
    seal_spliced,
)
from stockade.policy.document import PolicyDocument
from stockade.policy.model import Action, ContainerCondition, FileSelector, PartName
from stockade.policy.predicates import PathPattern, Workload
from stockade.policy.resources import LabelSelector

# Selector bits per part in one bundle: the width of the kernel's masks.
MAX_SELECTORS_PER_BUNDLE_PART = 1024
# Response rows per part in one bundle: the kernel's table size (STK_MAX_RESPONSES).
MAX_RESPONSES_PER_BUNDLE_PART = 1024
# Encoded placements (bit offset, policy index) kept per fragment: a document sits at
# a few in a cluster's bundles; past this many the oldest are dropped.
MAX_PLACEMENTS = 64
# Policy entries kept per document, by the namespaces its scope has on a node.
MAX_SCOPES = 4096
PART_OPERATIONS: dict[PartName, tuple[str, ...]] = {
    "process": ("fork", "exec"),
    "file": ("createExecutable", "modifyExecutable", "createFile", "modifyFile", "deleteFile"),
}


class CompileError(Exception):
    """The inputs can't be compiled into one bundle (the message says why)."""


@dataclass(frozen=True)
class Pod:
    """A pod as scoping sees it (no images: those are the sensor's business)."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


def _bits(bits: Iterable[int]) -> int:
    mask = 0
    for bit in bits:
        mask |= 1 << bit
    return mask


def _sort_key(doc: PolicyDocument) -> tuple[str, str, str]:
    return (doc.kind, doc.namespace or "", doc.name)


def _nonempty(selector: LabelSelector | None) -> LabelSelector | None:
    if selector is None or (not selector.match_labels and not selector.match_expressions):
        return None
    return selector


def _namespaces(
    doc: PolicyDocument,
    namespace_labels: Mapping[str, Mapping[str, str]] | None,
    resolved: dict[str, tuple[str, ...]],
) -> tuple[str, ...] | None:
    """The namespaces the policy's scope applies in (None = all).

    `resolved`: the namespaces each namespaceSelector (by its JSON) selects among
    `namespace_labels`, filled in as met: one bundle's policies often share one.
    """
    scope = doc.scope
    if scope.namespace is not None:
        return (scope.namespace,)
    if _nonempty(scope.namespace_selector) is None:
        return None
    if namespace_labels is None:
        raise CompileError(
            f"{doc.kind} {doc.key} has a namespaceSelector: compiling it needs the "
            "namespaces' labels"
        )
    selector = scope.namespace_selector
    assert selector is not None
    key = selector.model_dump_json()
    if key not in resolved:
        resolved[key] = tuple(
            sorted(ns for ns, labels in namespace_labels.items() if selector.matches(dict(labels)))
        )
    return resolved[key]


def _policy_entry(doc: PolicyDocument, namespaces: tuple[str, ...] | None) -> PolicyEntry:
    """The policy's entry in a bundle, its scope a predicate: namespaces and a pod selector."""
    return PolicyEntry(
        kind=doc.kind,
        namespace=doc.namespace,
        name=doc.name,
        uid=doc.uid,
        generation=doc.generation,
        mode=doc.mode,
        scope=PolicyScope(namespaces=namespaces, pod_selector=_nonempty(doc.scope.pod_selector)),
    )


class Audience:
    """Pods as scoping sees them: whether a document's scope selects one of them.

    The one scoping rule, for `compile --pods` and the operator alike. A
    namespace missing from `namespace_labels` is unknown, and a
    namespaceSelector never selects an unknown namespace, not even with
    `NotIn` or `DoesNotExist` (an unknown fact that is needed fails, as in
    `Scope.holds`; the bundle's scope, from the same labels, agrees). A
    ContainerPolicy is checked only against the pods of its own namespace.
    """

    def __init__(
        self, pods: Iterable[Pod], namespace_labels: Mapping[str, Mapping[str, str]]
    ) -> None:
        self.by_namespace: dict[str, list[Workload]] = defaultdict(list)
        for pod in pods:
            labels = namespace_labels.get(pod.namespace)
            self.by_namespace[pod.namespace].append(
                Workload(
                    namespace=pod.namespace,
                    pod_name=pod.name,
                    pod_labels=dict(pod.labels),
                    namespace_labels=dict(labels) if labels is not None else None,
                )
            )
        self.everyone = [w for ws in self.by_namespace.values() for w in ws]

    def selected_by(self, doc: PolicyDocument) -> bool:
        namespace = doc.scope.namespace
        workloads = self.everyone if namespace is None else self.by_namespace.get(namespace, [])
        return any(doc.scope.holds(w) for w in workloads)


def applicable(
    documents: Iterable[PolicyDocument],
    pods: Iterable[Pod],
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> list[PolicyDocument]:
    """The documents whose scope selects at least one of `pods`, in their order (`Audience`)."""
    audience = Audience(pods, namespace_labels)
    return [d for d in documents if audience.selected_by(d)]


@dataclass(frozen=True)
class _Fragment:
    """One document's part, compiled once with its selectors at bits 0..n-1.

    `_PartCompiler.add` shifts its masks by the bits already taken: the same tables
    as compiling the selectors in place, at a fraction of the cost (a policy edit
    recompiles every node's bundle, and each bundle repeats most policies). Masks,
    not bit lists: a part's tables OR them in, shifted, with no per-bit work.
    """

    selectors: tuple[tuple[str, dict[ContainerCondition, tuple[str, ...]]], ...]
    operations: tuple[tuple[str, int], ...]  # operation, mask
    paths: tuple[tuple[str, str, int], ...]  # kind, path, mask
    any_path: int
    names: tuple[tuple[str, int], ...]  # name, mask
    any_name: int
    interactive: tuple[tuple[bool, int], ...]  # required value, mask
    ignore_mounts: int
    ignore_files: int
    responses: tuple[tuple[int, int, tuple[Action, ...]], ...]  # match, exclude, actions
    # (offset, policy index) → `encoded` there: a policy edit re-seals every node's
    # bundle, and the other policies' entries sit where they sat.
    placements: dict[tuple[int, int], tuple[bytes, bytes]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def entries(self, offset: int, policy: int) -> tuple[list[SelectorEntry], list[ResponseEntry]]:
        """Its selector and response entries at bits from `offset`, as policy `policy`."""
        selectors = [
            SelectorEntry(bit=bit, policy=policy, name=name, container=container)
            for bit, (name, container) in enumerate(self.selectors, offset)
        ]
        responses = [
            ResponseEntry(
                policy=policy, match=match << offset, exclude=exclude << offset, actions=actions
            )
            for match, exclude, actions in self.responses
        ]
        return selectors, responses

    def encoded(self, offset: int, policy: int) -> tuple[bytes, bytes]:
        """`entries`' `entry_bytes`, comma-joined (selectors, responses); kept."""
        key = (offset, policy)
        found = self.placements.get(key)
        if found is None:
            if len(self.placements) >= MAX_PLACEMENTS:
                del self.placements[next(iter(self.placements))]
            selectors, responses = self.entries(offset, policy)
            found = (
                b",".join(map(entry_bytes, selectors)),
                b",".join(map(entry_bytes, responses)),
            )
            self.placements[key] = found
        return found


@dataclass
class _Compiled:
    """What the cache keeps of one document."""

    ref: weakref.ref[PolicyDocument]
    parts: dict[PartName, _Fragment | None] = field(default_factory=dict)
    # its scope's namespaces on a node → its entry and `entry_bytes`
    entries: dict[tuple[str, ...] | None, tuple[PolicyEntry, bytes]] = field(default_factory=dict)


class FragmentCache:
    """Each document's compiled parts and entries, for compiling it into many bundles
    (the operator).

    By document object (a new generation, or a re-parse, is a new document): an
    entry leaves with its document, so the cache keeps nothing alive; documents
    are never mutated. `compile_bundle` without one builds every fragment afresh.
    """

    def __init__(self) -> None:
        self._compiled: dict[int, _Compiled] = {}  # by id(document)

    def __len__(self) -> int:
        return len(self._compiled)

    def _of(self, doc: PolicyDocument) -> _Compiled:
        key = id(doc)
        compiled = self._compiled.get(key)
        if compiled is None or compiled.ref() is not doc:
            compiled = _Compiled(weakref.ref(doc, lambda ref: self._forget(key, ref)))
            self._compiled[key] = compiled
        return compiled

    def fragment(self, doc: PolicyDocument, part_name: PartName) -> _Fragment | None:
        parts = self._of(doc).parts
        if part_name not in parts:
            parts[part_name] = _build_fragment(doc, part_name)
        return parts[part_name]

    def policy_entry(
        self, doc: PolicyDocument, namespaces: tuple[str, ...] | None
    ) -> tuple[PolicyEntry, bytes]:
        """The document's `PolicyEntry` with these namespaces, and its `entry_bytes`."""
        entries = self._of(doc).entries
        found = entries.get(namespaces)
        if found is None:
            # a namespaceSelector's namespaces differ from node to node: one per node at most
            if len(entries) >= MAX_SCOPES:
                del entries[next(iter(entries))]
            entry = _policy_entry(doc, namespaces)
            found = entries[namespaces] = (entry, entry_bytes(entry))
        return found

    def _forget(self, key: int, ref: weakref.ref[PolicyDocument]) -> None:
        compiled = self._compiled.get(key)
        if compiled is not None and compiled.ref is ref:
            del self._compiled[key]


def _build_fragment(doc: PolicyDocument, part_name: PartName) -> _Fragment | None:
    part = doc.policy.parts().get(part_name)
    if part is None:
        return None
    selectors: list[tuple[str, dict[ContainerCondition, list[str]]]] = []
    operations: dict[str, list[int]] = {op: [] for op in PART_OPERATIONS[part_name]}
    paths: list[tuple[str, str, int]] = []
    any_path: list[int] = []
    names: list[tuple[str, int]] = []
    any_name: list[int] = []
    interactive: list[tuple[bool, int]] = []
    ignore_mounts: list[int] = []
    ignore_files: list[int] = []
    bit_of: dict[str, int] = {}

    def add_paths(bit: int, patterns: list[str] | None) -> None:
        if patterns is None:
            any_path.append(bit)
            return
        for pattern in patterns:
            parsed = PathPattern.parse(pattern)
            paths.append((parsed.kind.value, parsed.path, bit))

    for selector in part.selectors:
        bit = len(selectors)
        bit_of[selector.name.lower()] = bit
        selectors.append((selector.name, selector.container_conditions()))
        for op in selector.operation or PART_OPERATIONS[part_name]:
            operations[op].append(bit)
        if isinstance(selector, FileSelector):
            add_paths(bit, selector.target_file_path)
            if selector.ignore_volume_mounts:
                ignore_mounts.append(bit)
            if selector.ignore_volume_files:
                ignore_files.append(bit)
        else:
            add_paths(bit, selector.process_executable)
            if selector.process_name is None:
                any_name.append(bit)
            names.extend((name, bit) for name in selector.process_name or [])
            if selector.session_leader_interactive is not None:
                interactive.append((selector.session_leader_interactive, bit))
    responses = tuple(
        (
            _bits(bit_of[n.lower()] for n in response.match),
            _bits(bit_of[n.lower()] for n in response.exclude or []),
            tuple(sorted(response.actions)),
        )
        for response in part.responses
    )
    return _Fragment(
        selectors=tuple(
            (name, {condition: tuple(values) for condition, values in container.items()})
            for name, container in selectors
        ),
        operations=tuple((op, _bits(bits)) for op, bits in operations.items()),
        paths=tuple((kind, path, 1 << bit) for kind, path, bit in paths),
        any_path=_bits(any_path),
        names=tuple((name, 1 << bit) for name, bit in names),
        any_name=_bits(any_name),
        interactive=tuple((value, 1 << bit) for value, bit in interactive),
        ignore_mounts=_bits(ignore_mounts),
        ignore_files=_bits(ignore_files),
        responses=responses,
    )


class _PartCompiler:
    """Assigns bits to one part's selectors across policies and builds its tables."""

    def __init__(self, part: PartName, cache: FragmentCache) -> None:
        self.part = part
        self.cache = cache
        self.placed: list[tuple[_Fragment, int, int]] = []  # fragment, offset, policy index
        self.selector_count = 0
        self.response_count = 0
        self.operations: dict[str, int] = dict.fromkeys(PART_OPERATIONS[part], 0)
        self.paths: dict[str, dict[str, int]] = {
            "exact": defaultdict(int),
            "children": defaultdict(int),
            "recursive": defaultdict(int),
        }
        self.any_path = 0
        self.names: dict[str, int] = defaultdict(int)
        self.any_name = 0
        self.interactive: dict[bool, int] = {True: 0, False: 0}
        self.ignore_mounts = 0
        self.ignore_files = 0

    def add(self, policy_index: int, doc: PolicyDocument) -> None:
        fragment = self.cache.fragment(doc, self.part)
        if fragment is None:
            return
        offset = self.selector_count
        self.placed.append((fragment, offset, policy_index))
        self.selector_count += len(fragment.selectors)
        self.response_count += len(fragment.responses)
        for op, mask in fragment.operations:
            self.operations[op] |= mask << offset
        for kind, path, mask in fragment.paths:
            self.paths[kind][path] |= mask << offset
        self.any_path |= fragment.any_path << offset
        for name, mask in fragment.names:
            self.names[name] |= mask << offset
        self.any_name |= fragment.any_name << offset
        for value, mask in fragment.interactive:
            self.interactive[value] |= mask << offset
        self.ignore_mounts |= fragment.ignore_mounts << offset
        self.ignore_files |= fragment.ignore_files << offset

    def table_set(self) -> ProcessTableSet | FileTableSet:
        """This part's tables, every entry a model."""
        selectors: list[SelectorEntry] = []
        responses: list[ResponseEntry] = []
        for fragment, offset, policy in self.placed:
            placed_selectors, placed_responses = fragment.entries(offset, policy)
            selectors += placed_selectors
            responses += placed_responses
        return self._tables(selectors, responses)

    def spliced(self) -> SplicedPart:
        """This part's tables without entries, and the entries' bytes (`seal_spliced`)."""
        encoded = [fragment.encoded(offset, policy) for fragment, offset, policy in self.placed]
        return (
            self._tables([], []),
            [selectors for selectors, _ in encoded if selectors],
            [responses for _, responses in encoded if responses],
        )

    def _tables(
        self, selectors: list[SelectorEntry], responses: list[ResponseEntry]
    ) -> ProcessTableSet | FileTableSet:
        if self.selector_count > MAX_SELECTORS_PER_BUNDLE_PART:
            raise CompileError(
                f"{self.selector_count} {self.part} selectors on one node; a bundle holds at "
                f"most {MAX_SELECTORS_PER_BUNDLE_PART} per part"
            )
        if self.response_count > MAX_RESPONSES_PER_BUNDLE_PART:
            raise CompileError(
                f"{self.response_count} {self.part} responses on one node; a bundle holds at "
                f"most {MAX_RESPONSES_PER_BUNDLE_PART} per part"
            )

        def table(entries: Mapping[str, int]) -> dict[str, int]:
            return dict(sorted(entries.items()))

        fields: dict[str, Any] = {
            "selectors": selectors,
            "operations": table(self.operations),
            "paths": PathMasks(
                exact=table(self.paths["exact"]),
                children=table(self.paths["children"]),
                recursive=table(self.paths["recursive"]),
                any=self.any_path,
            ),
            "responses": responses,
        }
        if self.part == "process":
            fields["names"] = NameMasks(exact=table(self.names), any=self.any_name)
            fields["interactive"] = InteractiveMasks(
                require_true=self.interactive[True], require_false=self.interactive[False]
            )
        else:
            fields["volumes"] = VolumeMasks(
                ignore_mounts=self.ignore_mounts, ignore_files=self.ignore_files
            )
            return FileTableSet(**fields)
        return ProcessTableSet(**fields)


def compile_bundle(
    documents: Iterable[PolicyDocument],
    *,
    node: str | None = None,
    pods: Iterable[Pod] | None = None,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    cache: FragmentCache | None = None,
) -> Bundle:
    """Compile the documents that apply to at least one of `pods` (all, when None).

    `namespace_labels` maps namespace → labels; ClusterContainerPolicies with a
    namespaceSelector need it. `cache`: fragments kept from earlier bundles.
    """
    policies, process, file = _compile(documents, pods, namespace_labels, cache)
    entries = tuple(entry for entry, _ in policies)
    process_tables, file_tables = process.table_set(), file.table_set()
    assert isinstance(process_tables, ProcessTableSet) and isinstance(file_tables, FileTableSet)
    return Bundle.seal(node, entries, process_tables, file_tables)


def compile_sealed(
    documents: Iterable[PolicyDocument],
    *,
    node: str | None = None,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    cache: FragmentCache | None = None,
) -> Sealed:
    """`compile_bundle`'s bundle (all of `documents`) as its bytes, for the operator: each
    policy's entries are encoded once per place they take in a bundle (kept in `cache`)
    and spliced, not made into ~25 models per policy and serialized per bundle."""
    policies, process, file = _compile(documents, None, namespace_labels, cache)
    return seal_spliced(node, policies, process.spliced(), file.spliced())


def _compile(
    documents: Iterable[PolicyDocument],
    pods: Iterable[Pod] | None,
    namespace_labels: Mapping[str, Mapping[str, str]] | None,
    cache: FragmentCache | None,
) -> tuple[list[tuple[PolicyEntry, bytes]], _PartCompiler, _PartCompiler]:
    """The policies chosen, in bundle order, and each part's bits and tables."""
    chosen = sorted(documents, key=_sort_key)
    if pods is not None:
        pod_list = list(pods)
        chosen = applicable(chosen, pod_list, namespace_labels or {})
        # Only the namespaces of the node's pods can matter to its bundle.
        if namespace_labels is not None:
            on_node = {p.namespace for p in pod_list}
            namespace_labels = {ns: v for ns, v in namespace_labels.items() if ns in on_node}
    keys = [(d.kind, d.key) for d in chosen]
    if len(set(keys)) != len(keys):
        raise CompileError(
            "two policies share a kind and name: "
            + ", ".join(sorted(f"{k} {n}" for k, n in set(keys) if keys.count((k, n)) > 1))
        )
    cache = cache if cache is not None else FragmentCache()
    process, file = _PartCompiler("process", cache), _PartCompiler("file", cache)
    policies = []
    resolved: dict[str, tuple[str, ...]] = {}
    for index, doc in enumerate(chosen):
        policies.append(cache.policy_entry(doc, _namespaces(doc, namespace_labels, resolved)))
        process.add(index, doc)
        file.add(index, doc)
    return policies, process, file
