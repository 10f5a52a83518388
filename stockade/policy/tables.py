"""The table interpreter: decides an operation from a bundle alone, as the kernel does.

`PartTables` is the form the sensor writes into BPF maps; `decide` is the
kernel's algorithm in Python: AND the masks found by table lookups (no
pattern matching), then OR the actions of the response rows that apply.
`container_masks` is the sensor's user-space step, run once per container:
it evaluates the container-level predicates the bundle kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from stockade.policy.bundle import (
    Bundle,
    PathMasks,
    PolicyScope,
    ProcessTableSet,
    ResponseEntry,
)
from stockade.policy.compiler import PART_OPERATIONS
from stockade.policy.model import Mode, PartName
from stockade.policy.predicates import Workload, container_conditions_hold, parent_dir
from stockade.sensor.abi import ActionBits, PathTable

ACTION_BITS = {"log": ActionBits.LOG, "alert": ActionBits.ALERT, "block": ActionBits.BLOCK}


@dataclass(frozen=True)
class ResponseRow:
    match: int
    exclude: int
    actions: ActionBits
    policy: int


@dataclass(frozen=True)
class PathTables:
    exact: Mapping[str, int]
    children: Mapping[str, int]  # directory → selectors matching its direct children
    # LPM keys ("/dir/", or "/" for the root) → the union of the masks of every
    # recursive pattern on that directory or an ancestor: one longest-prefix
    # lookup yields every `/dir/**` that matches.
    recursive_lpm: Mapping[str, int]
    any: int  # selectors with no path condition

    @classmethod
    def from_bundle(cls, paths: PathMasks) -> PathTables:
        recursive = paths.recursive
        lpm: dict[str, int] = {}
        for directory in recursive:
            mask = 0
            for ancestor in _self_and_ancestors(directory):
                mask |= recursive.get(ancestor, 0)
            lpm[_lpm_key(directory)] = mask
        return cls(exact=paths.exact, children=paths.children, recursive_lpm=lpm, any=paths.any)

    @cached_property
    def below(self) -> Mapping[str, int]:
        """Directory (not "/") → the selectors with a pattern at or below it: renaming the
        directory moves the paths they match (the kernel's stk_dir_paths, looked up for both
        names of a rename)."""
        dirs = [(parent_dir(p), m) for p, m in self.exact.items()]
        dirs += self.children.items()
        dirs += [(key.rstrip("/") or "/", m) for key, m in self.recursive_lpm.items()]
        out: dict[str, int] = {}
        for directory, mask in dirs:
            for d in _self_and_ancestors(directory)[:-1]:  # not "/": it can't be renamed
                out[d] = out.get(d, 0) | mask
        return out

    @cached_property
    def heads(self) -> Mapping[str, PathTable] | None:
        """First component → the tables with an entry under it; None when an entry matches
        every path (children of "/", "/**"). A path is looked up only in the tables its first
        component has entries in, and not at all when it has none: the kernel checks this
        before it walks the whole path."""
        if "/" in self.children or "/" in self.recursive_lpm:
            return None
        heads: dict[str, PathTable] = {}
        for table, bit in (
            (self.exact, PathTable.EXACT),
            (self.children, PathTable.CHILDREN),
            (self.recursive_lpm, PathTable.RECURSIVE),
        ):
            for path in table:
                heads[path_head(path)] = heads.get(path_head(path), PathTable(0)) | bit
        return heads

    def lookup(self, path: str | None) -> int:
        if path is None:
            return self.any
        tables = PathTable.ALL if self.heads is None else self.heads.get(path_head(path), 0)
        mask = self.any
        if PathTable.EXACT & tables:
            mask |= self.exact.get(path, 0)
        if path == "/":
            return mask
        directory = parent_dir(path)
        if PathTable.CHILDREN & tables:
            mask |= self.children.get(directory, 0)
        if PathTable.RECURSIVE & tables:
            mask |= self._longest_prefix(_lpm_key(directory))
        return mask

    def _longest_prefix(self, key: str) -> int:
        """What a BPF LPM trie lookup returns: the value of the longest stored prefix."""
        for end in range(len(key), 0, -1):
            if key[end - 1] == "/" and key[:end] in self.recursive_lpm:
                return self.recursive_lpm[key[:end]]
        return 0


def path_head(path: str) -> str:
    """The first component of an absolute path ("" for "/")."""
    return path[1:].split("/", 1)[0]


def _lpm_key(directory: str) -> str:
    return "/" if directory == "/" else directory + "/"


def _self_and_ancestors(directory: str) -> list[str]:
    chain = [directory]
    while directory != "/":
        directory = parent_dir(directory)
        chain.append(directory)
    return chain


@dataclass(frozen=True)
class Operation:
    """One operation as the kernel sees it; None where the hook knows nothing."""

    operations: frozenset[str]
    path: str | None = None  # file: the target; process: the executable
    volume: str | None = None  # file: none, mount or file
    name: str | None = None  # process: comm
    interactive: bool | None = None  # process: the session has a controlling tty


@dataclass(frozen=True)
class PartTables:
    part: PartName
    selector_count: int
    operations: Mapping[str, int]
    paths: PathTables
    responses: tuple[ResponseRow, ...]
    names: Mapping[str, int]
    any_name: int
    require_interactive: int
    require_not_interactive: int
    ignore_mounts: int
    ignore_files: int

    @classmethod
    def from_bundle(cls, bundle: Bundle, part: PartName) -> PartTables:
        data = bundle.part(part)
        modes = [p.mode for p in bundle.policies]
        names: Mapping[str, int] = {}
        any_name = require_interactive = require_not_interactive = 0
        ignore_mounts = ignore_files = 0
        if isinstance(data, ProcessTableSet):
            names, any_name = data.names.exact, data.names.any
            require_interactive = data.interactive.require_true
            require_not_interactive = data.interactive.require_false
        else:
            ignore_mounts, ignore_files = data.volumes.ignore_mounts, data.volumes.ignore_files
        return cls(
            part=part,
            selector_count=len(data.selectors),
            operations={op.value: mask for op, mask in data.operations.items()},
            paths=PathTables.from_bundle(data.paths),
            responses=tuple(_row(r, modes[r.policy]) for r in data.responses),
            names=names,
            any_name=any_name,
            require_interactive=require_interactive,
            require_not_interactive=require_not_interactive,
            ignore_mounts=ignore_mounts,
            ignore_files=ignore_files,
        )

    @property
    def all_ones(self) -> int:
        return (1 << self.selector_count) - 1

    def matched(self, container_mask: int, op: Operation) -> int:
        mask = container_mask
        ops = 0
        for name in op.operations:
            ops |= self.operations[name]
        mask &= ops & self.paths.lookup(op.path)
        if self.part == "process":
            mask &= self.any_name | (self.names.get(op.name, 0) if op.name is not None else 0)
            if op.interactive is None:
                mask &= ~(self.require_interactive | self.require_not_interactive)
            else:
                mask &= ~(
                    self.require_not_interactive if op.interactive else self.require_interactive
                )
        else:
            if op.volume == "mount":
                mask &= ~self.ignore_mounts
            elif op.volume != "none":  # a single mounted file, or not known
                mask &= ~(self.ignore_mounts | self.ignore_files)
        return mask & self.all_ones

    def decide(self, container_mask: int, op: Operation) -> tuple[int, ActionBits]:
        """(matched-selector mask, actions) for one operation in one container."""
        mask = self.matched(container_mask, op)
        actions = ActionBits(0)
        for policy_actions in self.actions_by_policy(mask).values():
            actions |= policy_actions
        return mask, actions

    def actions_by_policy(self, matched: int) -> dict[int, ActionBits]:
        """Policy index → the actions of its responses that `matched` selectors trigger
        (a response fires when one of its selectors matched and none it excludes did)."""
        out: dict[int, ActionBits] = {}
        if matched == 0:
            return out
        for row in self.responses:
            if matched & row.match and not matched & row.exclude:
                out[row.policy] = out.get(row.policy, ActionBits(0)) | row.actions
        return out


def _row(row: ResponseEntry, mode: Mode) -> ResponseRow:
    actions = ActionBits(0)
    for action in row.actions:
        actions |= ACTION_BITS[action]
    if mode == Mode.AUDIT and ActionBits.BLOCK in actions:
        actions = (actions & ~ActionBits.BLOCK) | ActionBits.AUDIT_BLOCK
    return ResponseRow(row.match, row.exclude, actions, row.policy)


def scope_holds(scope: PolicyScope, workload: Workload) -> bool:
    if scope.namespaces is not None and workload.namespace not in scope.namespaces:
        return False
    if scope.pod_selector is None:
        return True
    return workload.pod_labels is not None and scope.pod_selector.matches(workload.pod_labels)


def container_masks(bundle: Bundle, workload: Workload) -> dict[PartName, int]:
    """Each part's selectors whose container-level predicates hold for this container."""
    in_scope = [scope_holds(p.scope, workload) for p in bundle.policies]
    masks: dict[PartName, int] = {}
    for part in PART_OPERATIONS:
        mask = 0
        for selector in bundle.part(part).selectors:
            if in_scope[selector.policy] and container_conditions_hold(
                selector.container, workload
            ):
                mask |= 1 << selector.bit
        masks[part] = mask
    return masks


def selector_names(bundle: Bundle, part: PartName, mask: int) -> list[tuple[int, str]]:
    """(policy index, selector name) of every bit set in `mask`, in bit order."""
    return [(s.policy, s.name) for s in bundle.part(part).selectors if mask >> s.bit & 1]
