"""The policies the scenarios apply, as a user writes them (shared by the host's scenarios and
the VM's). Paths are the test's own directory or binary: the stand-in's containers share the
host's filesystem, so a policy must not reach beyond what the test made."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

API_VERSION = "stockade.dev/v1alpha1"


def container_policy(
    name: str, namespace: str, labels: Mapping[str, str], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ContainerPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"podSelector": {"matchLabels": dict(labels)}, **spec},
    }


def cluster_policy(name: str, namespace_labels: Mapping[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterContainerPolicy",
        "metadata": {"name": name},
        "spec": {"namespaceSelector": {"matchLabels": dict(namespace_labels)}, **spec},
    }


def no_new_executables(
    directory: Path, actions: tuple[str, ...] = ("alert", "block")
) -> dict[str, Any]:
    """Drift prevention: a new or modified executable under `directory` is alerted and
    blocked (the spec's own example, narrowed to the test's directory)."""
    return {
        "file": {
            "selectors": [
                {
                    "name": "newExecutables",
                    "operation": ["createExecutable", "modifyExecutable"],
                    "targetFilePath": [f"{directory}/**"],
                }
            ],
            "responses": [{"match": ["newExecutables"], "actions": list(actions)}],
        }
    }


def exec_of(
    tool: Path, actions: tuple[str, ...] = ("alert", "block"), **conditions: Any
) -> dict[str, Any]:
    """The exec of `tool` (with more `conditions`, e.g. sessionLeaderInteractive)."""
    selector = {"name": "tool", "operation": ["exec"], "processExecutable": [str(tool)]}
    return {
        "process": {
            "selectors": [selector | conditions],
            "responses": [{"match": ["tool"], "actions": list(actions)}],
        }
    }
