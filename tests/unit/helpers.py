"""Small builders shared by the unit tests."""

from __future__ import annotations

from typing import Any

import yaml

from stockade.policy.document import PolicyDocument
from stockade.policy.evaluator import Event
from stockade.policy.loader import LoadedDocument, YamlDocument, load_document
from stockade.policy.source import parse_yaml

# The spec's response example: alert and block drift under /usr/bin and /etc, but not for nginx.
SPEC_RESPONSES_EXAMPLE = """
file:
  selectors:
    - name: binDirExeMods
      operation: [createExecutable, modifyExecutable]
      targetFilePath: [/usr/bin/**]
    - name: etcFileChanges
      operation: [createFile, modifyFile, deleteFile]
      targetFilePath: [/etc/**]
    - name: nginx
      containerImageName: [nginx]
  responses:
    - match: [binDirExeMods, etcFileChanges]
      exclude: [nginx]
      actions: [alert, block]
"""


def load_text(text: str, source: str = "policy.yaml") -> list[LoadedDocument]:
    return [load_document(doc, source) for doc in parse_yaml(text, source)]


def load(data: dict[str, Any], source: str = "policy.yaml") -> LoadedDocument:
    return load_document(YamlDocument(data, 1), source)


def policy(data: dict[str, Any] | str) -> PolicyDocument:
    """A valid policy document from a dict or YAML text; fails the test otherwise."""
    loaded = load(yaml.safe_load(data) if isinstance(data, str) else data)
    errors = [f for f in loaded.findings if f.severity == "error"]
    assert loaded.document is not None and not errors, errors
    return loaded.document


def errors(data: dict[str, Any] | str) -> list[str]:
    """`path: message` of every error in a policy."""
    loaded = load(yaml.safe_load(data) if isinstance(data, str) else data)
    return [f"{f.path}: {f.message}" for f in loaded.findings if f.severity == "error"]


def event(**fields: Any) -> Event:
    return Event.model_validate(fields)


def manifest(
    kind: str, spec: dict[str, Any], name: str = "p", namespace: str | None = "shop"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "stockade.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}
