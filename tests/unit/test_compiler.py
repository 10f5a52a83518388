"""The bundle: deterministic, hashed, scoped to a node's pods, kernel-sized."""

from __future__ import annotations

import random

import pytest
import yaml

from stockade.policy.bundle import PolicyScope, ResponseEntry, content_hash, encode
from stockade.policy.compiler import (
    MAX_SELECTORS_PER_BUNDLE_PART,
    CompileError,
    Pod,
    compile_bundle,
)
from stockade.policy.document import PolicyDocument
from stockade.policy.predicates import Workload
from stockade.policy.tables import Operation, PartTables, container_masks
from stockade.sensor.abi import ActionBits

from .helpers import SPEC_RESPONSES_EXAMPLE, manifest, policy

EXEC_ALERT = {
    "process": {
        "selectors": [{"name": "all", "operation": ["exec"]}],
        "responses": [{"match": ["all"], "actions": ["alert"]}],
    }
}


def web_policy(name: str = "web", namespace: str = "shop") -> PolicyDocument:
    spec = {**EXEC_ALERT, "podSelector": {"matchLabels": {"app": "web"}}}
    return policy(manifest("ContainerPolicy", spec, name=name, namespace=namespace))


def many_selector_policy(name: str, count: int, offset: int = 0) -> PolicyDocument:
    selectors = [
        {
            "name": f"s{i}",
            "operation": ["createFile"],
            "targetFilePath": [f"/data/d{offset + i}/**"],
        }
        for i in range(count)
    ]
    return policy(
        manifest(
            "ContainerPolicy",
            {
                "file": {
                    "selectors": selectors,
                    "responses": [{"match": [f"s{i}"], "actions": ["alert"]} for i in range(count)],
                }
            },
            name=name,
        )
    )


def test_same_inputs_same_bytes_whatever_the_order() -> None:
    docs = [web_policy("a"), web_policy("b"), policy(EXEC_ALERT)]
    first = compile_bundle(docs, node="n1")
    again = compile_bundle(list(reversed(docs)), node="n1")
    assert encode(first) == encode(again)
    assert first.hash == again.hash == content_hash(first)
    assert first.hash.startswith("sha256:")


def test_hash_follows_content() -> None:
    one = compile_bundle([web_policy("a")])
    spec = {**EXEC_ALERT, "mode": "audit", "podSelector": {"matchLabels": {"app": "web"}}}
    other = compile_bundle([policy(manifest("ContainerPolicy", spec, name="a"))])
    assert one.hash != other.hash


def test_tables_of_the_spec_example() -> None:
    data = yaml.safe_load(SPEC_RESPONSES_EXAMPLE)
    data["file"]["selectors"][1]["targetFilePath"] += ["/root/.bashrc", "/etc/cron.d/*"]
    doc = policy(data)
    file = compile_bundle([doc]).file
    assert [(s.bit, s.name, s.container) for s in file.selectors] == [
        (0, "binDirExeMods", {}),
        (1, "etcFileChanges", {}),
        (2, "nginx", {"containerImageName": ("nginx",)}),
    ]
    assert file.operations == {
        "createExecutable": 0b101,
        "modifyExecutable": 0b101,
        "createFile": 0b110,
        "modifyFile": 0b110,
        "deleteFile": 0b110,
    }
    assert file.paths.exact == {"/root/.bashrc": 0b10}
    assert file.paths.children == {"/etc/cron.d": 0b10}
    assert file.paths.recursive == {"/etc": 0b10, "/usr/bin": 0b1}
    assert file.paths.any == 0b100
    assert file.responses == (
        ResponseEntry(policy=0, match=0b11, exclude=0b100, actions=("alert", "block")),
    )


def test_recursive_patterns_nest_in_one_lookup() -> None:
    doc = policy(
        {
            "file": {
                "selectors": [
                    {"name": "root", "targetFilePath": ["/**"]},
                    {"name": "usr", "targetFilePath": ["/usr/**"]},
                    {"name": "local", "targetFilePath": ["/usr/local/**"]},
                ],
                "responses": [{"match": ["root"], "actions": ["log"]}],
            }
        }
    )
    paths = PartTables.from_bundle(compile_bundle([doc]), "file").paths
    assert paths.recursive_lpm == {"/": 0b001, "/usr/": 0b011, "/usr/local/": 0b111}
    assert paths.lookup("/usr/local/bin/x") == 0b111
    assert paths.lookup("/usr/local") == 0b011
    assert paths.lookup("/usr") == 0b001
    assert paths.lookup("/") == 0


def test_only_policies_for_the_nodes_pods() -> None:
    docs = [web_policy("web"), web_policy("other-ns", namespace="prod")]
    pods = [Pod("shop", "web-1", {"app": "web"}), Pod("shop", "db-0", {"app": "db"})]
    bundle = compile_bundle(docs, node="n1", pods=pods)
    assert [p.name for p in bundle.policies] == ["web"]
    assert compile_bundle(docs, pods=[Pod("shop", "db-0", {"app": "db"})]).policies == ()


def test_namespace_selector_becomes_a_list_of_namespaces() -> None:
    spec = {**EXEC_ALERT, "namespaceSelector": {"matchLabels": {"env": "prod"}}}
    doc = policy(manifest("ClusterContainerPolicy", spec, name="c", namespace=None))
    labels = {"a": {"env": "prod"}, "b": {"env": "dev"}, "c": {"env": "prod"}}
    bundle = compile_bundle([doc], namespace_labels=labels)
    assert bundle.policies[0].scope == PolicyScope(namespaces=("a", "c"), pod_selector=None)
    on_node = compile_bundle([doc], pods=[Pod("c", "x")], namespace_labels=labels)
    assert on_node.policies[0].scope.namespaces == ("c",)
    with pytest.raises(CompileError, match="needs the namespaces' labels"):
        compile_bundle([doc])


def test_container_masks_apply_scope_and_container_conditions() -> None:
    doc = policy(
        manifest(
            "ContainerPolicy",
            {
                "podSelector": {"matchLabels": {"app": "web"}},
                "process": {
                    "selectors": [
                        {"name": "all", "operation": ["exec"]},
                        {"name": "nginx", "containerImageName": ["nginx"]},
                    ],
                    "responses": [{"match": ["all"], "actions": ["log"]}],
                },
            },
        )
    )
    bundle = compile_bundle([doc])
    web = Workload(namespace="shop", pod_labels={"app": "web"}, image_name="nginx")
    assert container_masks(bundle, web) == {"process": 0b11, "file": 0}
    other = Workload(namespace="shop", pod_labels={"app": "db"}, image_name="nginx")
    assert container_masks(bundle, other) == {"process": 0, "file": 0}


def test_a_full_bundle_part_of_1024_selectors() -> None:
    docs = [many_selector_policy(f"p{i}", 256, offset=256 * i) for i in range(4)]
    bundle = compile_bundle(docs)
    assert len(bundle.file.selectors) == MAX_SELECTORS_PER_BUNDLE_PART
    tables = PartTables.from_bundle(bundle, "file")
    masks = container_masks(bundle, Workload(namespace="shop"))
    for i in random.Random(1).sample(range(1024), 50):
        mask, actions = tables.decide(
            masks["file"], Operation(frozenset({"createFile"}), path=f"/data/d{i}/x", volume="none")
        )
        assert mask == 1 << i
        assert actions == ActionBits.ALERT
    too_many = [*docs, many_selector_policy("one-more", 1)]
    with pytest.raises(CompileError, match="1025 file selectors on one node"):
        compile_bundle(too_many)


def test_two_policies_with_one_name_are_refused() -> None:
    with pytest.raises(CompileError, match="share a kind and name"):
        compile_bundle([web_policy("a"), web_policy("a")])
