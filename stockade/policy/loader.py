"""Reading policy files: bare policies (the seed's format) and Kubernetes manifests.

Every problem becomes a `Finding` with the field path and, where the YAML
told us, the line; a file that can't be read, parsed or is refused by the
limits of `source.py` raises `SourceError` with a one-line message naming the
file and position. Nothing is dropped silently: documents of other kinds are
reported as skipped.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from stockade.policy import model, resources
from stockade.policy.document import PolicyDocument
from stockade.policy.rules import Finding, check
from stockade.policy.source import Loc, SourceError, YamlDocument, format_path, read_yaml, shown

__all__ = [
    "LoadedDocument",
    "SourceError",
    "YamlDocument",
    "iter_policies",
    "load_document",
    "load_file",
]


@dataclass
class LoadedDocument:
    source: str
    line: int
    document: PolicyDocument | None = None
    findings: list[Finding] = field(default_factory=list)
    skipped: str | None = None  # why a document that isn't a policy was passed over

    @property
    def valid(self) -> bool:
        return self.skipped is None and not any(f.severity == "error" for f in self.findings)


def _known_fields() -> list[str]:
    classes: list[type[BaseModel]] = [
        model.FileSelector,
        model.ProcessSelector,
        model.Response,
        model.FilePart,
        model.Policy,
        resources.ClusterContainerPolicySpec,
        resources.LabelSelector,
        resources.LabelSelectorRequirement,
        resources.ContainerPolicy,
    ]
    return sorted({f.alias or name for c in classes for name, f in c.model_fields.items()})


KNOWN_FIELDS = _known_fields()
# Problems reported per document: enough to fix a file, bounded for a hostile one.
MAX_FINDINGS = 100


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        name = str(error["loc"][-1])
        if name in KNOWN_FIELDS:
            return f"field {name!r} is not allowed here"
        close = difflib.get_close_matches(name, KNOWN_FIELDS, n=1)
        return f"unknown field {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
    if kind == "missing":
        return "required field is missing"
    return str(error["msg"])


def validation_findings(exc: ValidationError, doc: YamlDocument) -> list[Finding]:
    errors = exc.errors()
    findings = []
    for error in errors[:MAX_FINDINGS]:
        loc: Loc = tuple(p for p in error["loc"] if isinstance(p, str | int))
        findings.append(
            Finding(format_path(loc) or "document", _message(error), line=doc.line_of(loc))
        )
    if len(errors) > MAX_FINDINGS:
        more = len(errors) - MAX_FINDINGS
        findings.append(Finding("document", f"{more} more problems not shown", line=doc.line))
    return findings


def _with_lines(findings: list[Finding], doc: YamlDocument) -> list[Finding]:
    """Attach source lines to findings whose path is `a.b[0].c`."""
    out = []
    for f in findings:
        loc: Loc = tuple(
            int(p) if p.isdigit() else p
            for p in f.path.replace("[", ".").replace("]", "").split(".")
        )
        out.append(Finding(f.path, f.message, f.severity, doc.line_of(loc)))
    return out


def load_document(doc: YamlDocument, source: str) -> LoadedDocument:
    """Validate one YAML document as a bare policy or a policy manifest."""
    loaded = LoadedDocument(source=source, line=doc.line)
    data = doc.data
    if not isinstance(data, dict):
        loaded.findings.append(Finding("document", "a policy must be a mapping", line=doc.line))
        return loaded
    kind = data.get("kind")
    if kind is None and "apiVersion" not in data:
        try:
            policy = model.Policy.model_validate(data)
        except ValidationError as exc:
            loaded.findings = validation_findings(exc, doc)
            return loaded
        loaded.findings = _with_lines(check(policy), doc)
        loaded.document = PolicyDocument.bare(Path(source).stem, policy)
        return loaded
    manifest_class = resources.MANIFEST_KINDS.get(str(kind))
    if manifest_class is None:
        meta = data.get("metadata")
        name = meta.get("name", "?") if isinstance(meta, dict) else "?"
        loaded.skipped = (
            f"{shown(kind)} {shown(name)}: not a ContainerPolicy or ClusterContainerPolicy"
        )
        return loaded
    try:
        manifest = manifest_class.model_validate(data)
    except ValidationError as exc:
        loaded.findings = validation_findings(exc, doc)
        return loaded
    loaded.findings = _with_lines(check(manifest.spec.policy(), prefix="spec."), doc)
    loaded.document = PolicyDocument.from_manifest(manifest)
    return loaded


def load_file(path: Path) -> list[LoadedDocument]:
    return [load_document(doc, str(path)) for doc in read_yaml(path)]


def iter_policies(paths: list[Path]) -> Iterator[PolicyDocument]:
    """The valid policies of the files; raises SourceError on the first problem."""
    for path in paths:
        for loaded in load_file(path):
            errors = [f for f in loaded.findings if f.severity == "error"]
            if errors:
                raise SourceError(errors[0].render(str(path)))
            if loaded.document is not None:
                yield loaded.document
