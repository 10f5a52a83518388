"""The rules that relate several fields of a policy, with exact field paths.

`check` returns every problem at once: errors make a policy invalid, warnings
don't. The apiserver checks the same rules where CEL can (see the CRDs);
this is the full set, used by `stockade validate`, the operator and the
sensor's standalone mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from stockade.policy.model import (
    FORBIDDEN_PAIRS,
    Action,
    FileSelector,
    PartName,
    Policy,
    Response,
    Selector,
    pair_message,
)

# File operations whose blocking, unnarrowed by a path, would break workloads.
WRITE_OPERATIONS = frozenset({"createFile", "modifyFile", "deleteFile"})


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    path: str  # e.g. file.responses[0].actions
    message: str
    severity: Severity = Severity.ERROR
    line: int | None = None  # in the source file, when known

    def render(self, source: str) -> str:
        where = f" (line {self.line})" if self.line else ""
        prefix = "warning: " if self.severity == Severity.WARNING else ""
        return f"{source}: {self.path}: {prefix}{self.message}{where}"


def check(policy: Policy, prefix: str = "") -> list[Finding]:
    """Every cross-field problem of a policy whose fields are individually valid."""
    findings: list[Finding] = []
    parts = policy.parts()
    if not parts:
        findings.append(
            Finding(
                prefix.rstrip(".") or "policy", "a policy needs a process part, a file part or both"
            )
        )
    for part_name, part in parts.items():
        other: PartName = "file" if part_name == "process" else "process"
        other_part = parts.get(other)
        other_names = {s.name.lower() for s in other_part.selectors} if other_part else set()
        findings += _check_part(
            f"{prefix}{part_name}", part_name, part.selectors, part.responses, other_names
        )
    return findings


def _check_part(
    where: str,
    part: PartName,
    selectors: Sequence[Selector],
    responses: list[Response],
    other_part_names: set[str],
) -> list[Finding]:
    findings: list[Finding] = []
    by_name: dict[str, tuple[int, Selector]] = {}
    for i, selector in enumerate(selectors):
        at = f"{where}.selectors[{i}]"
        key = selector.name.lower()
        if key in by_name:
            findings.append(
                Finding(
                    f"{at}.name",
                    f"{selector.name!r} is already the name of selectors[{by_name[key][0]}]; "
                    "names are unique within a part, ignoring case",
                )
            )
        else:
            by_name[key] = (i, selector)
        conditions = selector.conditions()
        if not conditions:
            findings.append(
                Finding(
                    at,
                    f"selector {selector.name!r} has no condition; add at "
                    "least one, e.g. operation",
                )
            )
        for a, b in FORBIDDEN_PAIRS:
            if a in conditions and b in conditions:
                findings.append(Finding(at, pair_message((a, b))))

    for r, response in enumerate(responses):
        at = f"{where}.responses[{r}]"
        for field, names in (("match", response.match), ("exclude", response.exclude or [])):
            for n, name in enumerate(names):
                if name.lower() in by_name:
                    continue
                hint = (
                    f"; {name!r} is a selector of the other part, and the parts never mix"
                    if name.lower() in other_part_names
                    else ""
                )
                findings.append(
                    Finding(f"{at}.{field}[{n}]", f"{name!r} is not a {part} selector{hint}")
                )
        if Action.BLOCK in response.actions and Action.ALERT not in response.actions:
            findings.append(Finding(f"{at}.actions", "block needs alert in the same response"))
        if Action.BLOCK in response.actions and part == "file":
            findings += _check_file_block(at, response, by_name)
    return findings


def _check_file_block(
    at: str, response: Response, by_name: dict[str, tuple[int, Selector]]
) -> list[Finding]:
    """A blocking file response must be narrowed by a path (the spec's safety rule)."""
    findings: list[Finding] = []
    excludes = [by_name[n.lower()][1] for n in response.exclude or [] if n.lower() in by_name]
    exclude_narrows = any(isinstance(s, FileSelector) and s.target_file_path for s in excludes)
    for n, name in enumerate(response.match):
        if name.lower() not in by_name:
            continue
        selector = by_name[name.lower()][1]
        assert isinstance(selector, FileSelector)
        operations = set(selector.operation) if selector.operation else set(WRITE_OPERATIONS)
        writes = sorted(operations & WRITE_OPERATIONS)
        if writes and not selector.target_file_path and not exclude_narrows:
            findings.append(
                Finding(
                    f"{at}.match[{n}]",
                    f"blocking {name!r} would block every {'/'.join(writes)} in the container; "
                    f"add targetFilePath to {name!r} or to a selector in this response's exclude",
                )
            )
        if selector.target_file_path and "/**" in selector.target_file_path:
            findings.append(
                Finding(
                    f"{at}.match[{n}]",
                    f"{name!r} has targetFilePath /** in a blocking response: it blocks these "
                    "operations on every path in the container",
                    Severity.WARNING,
                )
            )
    return findings
