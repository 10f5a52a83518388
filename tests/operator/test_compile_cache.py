"""The compiler's per-document fragment cache never changes a bundle's bytes.

Pure: no apiserver. The operator recompiles every node's bundle with the same
document objects, so fragments are reused across bundles, at other bit offsets
and policy indexes. That shifting is right is what tests/unit (the spec
example's tables, 1024 selectors over four policies, and the agreement with
the reference evaluator on multi-policy bundles) shows; here: warm equals cold.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from stockade.operator.objects import policy_record
from stockade.policy.bundle import configmap_payload, encode
from stockade.policy.compiler import FragmentCache, compile_bundle
from stockade.policy.document import PolicyDocument
from stockade.policy.loader import load_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"


def _examples() -> list[PolicyDocument]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d.document for d in load_file(path) if d.valid and d.document is not None]
    return docs


def _bench_like(k: int) -> PolicyDocument:
    spec: dict[str, Any] = {
        "process": {
            "selectors": [
                {"name": "shells", "processName": ["bash", "sh"], "operation": ["exec"]},
                {"name": "Tools", "processExecutable": [f"/usr/local/bin/t{k}", "/tmp/**"]},
                {"name": "any", "operation": ["fork"], "sessionLeaderInteractive": True},
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
            "metadata": {"name": f"cc{k}", "uid": f"uid-cc{k}", "generation": 1 + k % 4},
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
                "generation": 1,
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
