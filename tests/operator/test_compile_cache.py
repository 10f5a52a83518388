"""The compiler's per-document fragment cache never changes a bundle's bytes.

Pure: no apiserver. The operator recompiles every node's bundle with the same
document objects, so fragments are reused across bundles, at other bit offsets
and policy indexes. That shifting is right is what tests/unit (the spec
example's tables, 1024 selectors over four policies, and the agreement with
the reference evaluator on multi-policy bundles) shows; here: warm equals cold.
"""

from __future__ import annotations

import random
import weakref
from pathlib import Path
from typing import Any

import pytest

from stockade.operator.objects import policy_record
from stockade.policy import compiler
from stockade.policy.bundle import configmap_payload, decode, encode
from stockade.policy.compiler import FragmentCache, Pod, applicable, compile_bundle, compile_sealed
from stockade.policy.document import PolicyDocument
from stockade.policy.loader import load_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"


def _examples() -> list[PolicyDocument]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d.document for d in load_file(path) if d.valid and d.document is not None]
    return docs


def _bench_like(k: int, edit: int = 0) -> PolicyDocument:
    """Policy k; edit e: a later generation with e more process selectors (which moves
    the bits of every policy after it)."""
    spec: dict[str, Any] = {
        "process": {
            "selectors": [
                {"name": "shells", "processName": ["bash", "sh"], "operation": ["exec"]},
                {"name": "Tools", "processExecutable": [f"/usr/local/bin/t{k}", "/tmp/**"]},
                {"name": "any", "operation": ["fork"], "sessionLeaderInteractive": True},
                *({"name": f"e{i}", "processName": [f"e{k}-{i}"]} for i in range(edit)),
            ],
            "responses": [
                {"match": ["shells", "tools"], "exclude": ["any"], "actions": ["alert", "log"]}
            ],
        },
        "file": {
            "selectors": [
                {
                    "name": "config",
                    "operation": ["modifyFile", "createFile"],
                    "targetFilePath": [f"/etc/app{k}/**", "/etc/passwd", "/etc/*"],
                }
            ],
            "responses": [{"match": ["config"], "actions": ["log"]}],
        },
    }
    if k % 3 == 0:
        body = {
            "apiVersion": "stockade.dev/v1alpha1",
            "kind": "ClusterContainerPolicy",
            "metadata": {"name": f"cc{k}", "uid": f"uid-cc{k}", "generation": 1 + k % 4 + edit},
            "spec": {"namespaceSelector": {"matchLabels": {"env": "prod"}}, **spec},
        }
    else:
        body = {
            "apiVersion": "stockade.dev/v1alpha1",
            "kind": "ContainerPolicy",
            "metadata": {
                "name": f"cp{k}",
                "namespace": f"ns{k % 4}",
                "uid": f"uid-cp{k}",
                "generation": 1 + edit,
            },
            "spec": {"podSelector": {"matchLabels": {"app": f"a{k % 5}"}}, **spec},
        }
    document = policy_record(body).document
    assert document is not None
    return document


def test_fragments_compile_the_same_bytes() -> None:
    docs = _examples() + [_bench_like(k) for k in range(24)]
    assert len(docs) > 24
    labels = {f"ns{i}": {"env": "prod" if i % 2 else "dev"} for i in range(4)}
    rng = random.Random(5)
    subsets = [rng.sample(docs, rng.randint(1, len(docs))) for _ in range(30)] + [docs]
    cache = FragmentCache()
    cached = [
        compile_bundle(s, node=f"n{i}", namespace_labels=labels, cache=cache)
        for i, s in enumerate(subsets)
    ]
    assert len(cache) == len(docs)
    # again, now that every fragment is cached (other offsets, other indexes)
    again = [
        compile_bundle(s, node=f"n{i}", namespace_labels=labels, cache=cache)
        for i, s in enumerate(subsets)
    ]
    # without a cache: every fragment built afresh
    reference = [
        compile_bundle(s, node=f"n{i}", namespace_labels=labels) for i, s in enumerate(subsets)
    ]
    for a, b, ref in zip(cached, again, reference, strict=True):
        assert encode(a) == encode(ref)
        assert encode(b) == encode(ref)
        assert a.hash == ref.hash
        assert configmap_payload(b) == configmap_payload(ref)


@pytest.mark.parametrize("kept", [64, 2], ids=["placements-kept", "placements-dropped"])
def test_sealed_bundles_are_fresh_bundles_across_changes(
    kept: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's spliced bytes (`compile_sealed`, entries kept per placement and scope
    across passes) equal a bundle compiled from scratch, pass after pass, while policies
    are edited (their bits and every later policy's move), deleted and re-created, come in
    another order, and pods and namespaces change labels."""
    monkeypatch.setattr(compiler, "MAX_PLACEMENTS", kept)
    monkeypatch.setattr(compiler, "MAX_SCOPES", kept)
    rng = random.Random(19)
    edits = dict.fromkeys(range(24), 0)
    docs = {k: _bench_like(k) for k in edits}
    examples = _examples()
    labels = {f"ns{i}": {"env": "prod" if i % 2 else "dev"} for i in range(4)}
    nodes = {
        f"n{n}": [Pod(f"ns{rng.randrange(4)}", f"p{n}-{j}", {"app": f"a{rng.randrange(5)}"})
                  for j in range(rng.randint(1, 6))]
        for n in range(6)
    }  # fmt: skip
    cache = FragmentCache()
    changes = ["edit", "delete", "recreate", "pod", "namespace", "reorder"]
    for step in range(60):
        change = changes[step % len(changes)]
        if change == "edit":
            k = rng.choice(list(docs))
            edits[k] = edits[k] % 3 + 1
            docs[k] = _bench_like(k, edits[k])
        elif change == "delete" and docs:
            del docs[rng.choice(list(docs))]
        elif change == "recreate":
            k = rng.choice([k for k in edits if k not in docs] or list(edits))
            docs[k] = _bench_like(k, edits[k])
        elif change == "pod":
            pods = nodes[rng.choice(list(nodes))]
            i = rng.randrange(len(pods))
            pods[i] = Pod(pods[i].namespace, pods[i].name, {"app": f"a{rng.randrange(5)}"})
        elif change == "namespace":
            ns = f"ns{rng.randrange(4)}"
            labels[ns] = {"env": "dev" if labels[ns]["env"] == "prod" else "prod"}
        everything = list(docs.values()) + examples
        rng.shuffle(everything)  # documents come in any order
        for node, pods in nodes.items():
            fresh = compile_bundle(everything, node=node, pods=pods, namespace_labels=labels)
            on_node = {p.namespace: labels[p.namespace] for p in pods}
            sealed = compile_sealed(
                applicable(everything, pods, labels),
                node=node,
                namespace_labels=on_node,
                cache=cache,
            )
            assert sealed.raw == encode(fresh), (step, change, node)
            assert (sealed.hash, sealed.policies) == (fresh.hash, fresh.policies)
            assert configmap_payload(sealed) == configmap_payload(fresh)
            assert decode(sealed.raw) == fresh


def test_a_status_write_keeps_the_document() -> None:
    """The operator writes every policy's status after a pass; the watch then brings each
    policy back with the same uid and generation. Its document must stay the same object,
    or the next pass scopes and compiles every policy on every node afresh (the first
    edit after a cold start cost twice the CPU of the next ones)."""
    body: dict[str, Any] = {
        "apiVersion": "stockade.dev/v1alpha1",
        "kind": "ClusterContainerPolicy",
        "metadata": {"name": "cc", "uid": "uid-cc", "generation": 1, "resourceVersion": "5"},
        "spec": {"process": {"selectors": [{"name": "s", "processName": ["sh"]}],
                             "responses": [{"match": ["s"], "actions": ["log"]}]}},
    }  # fmt: skip
    parsed: weakref.WeakValueDictionary[tuple[str, int], PolicyDocument] = (
        weakref.WeakValueDictionary()
    )
    first = policy_record(body, parsed)
    status = {**body, "status": {"observedGeneration": 1}}
    status["metadata"] = {**body["metadata"], "resourceVersion": "6"}
    again = policy_record(status, parsed)
    assert first.document is not None and again.document is first.document
    assert again.version == "6" and again.errors == ()
    edited = {**body, "metadata": {**body["metadata"], "generation": 2}}
    edited["spec"] = {**body["spec"], "mode": "audit"}
    changed = policy_record(edited, parsed)
    assert changed.document is not first.document and changed.document is not None
    assert changed.document.mode == "audit" and changed.document.generation == 2
    invalid = {**body, "metadata": {**body["metadata"], "generation": 3}, "spec": {"x": 1}}
    assert policy_record(invalid, parsed).document is None
    assert policy_record(invalid, parsed).errors
