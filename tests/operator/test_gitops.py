"""A policy repository under Argo CD or Flux: manifests applied with server-side apply, as
those tools apply them; the operator reconciles and writes status; a re-apply shows no
drift, because nothing the operator writes lands in spec or in user-owned metadata."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import client

from stockade.policy.bundle import HASH_ANNOTATION

from .conftest import Cluster, Kubectl, Operator, wait_for
from .test_argocd_health import argocd_health
from .test_operator import _report, ccpol, cpol, read_bundle

pytestmark = pytest.mark.integration


def live(kubectl: Kubectl, manifest: dict[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    where = ["-n", meta["namespace"]] if "namespace" in meta else []
    args = ["get", manifest["kind"].lower(), meta["name"], *where, "-o", "json"]
    out: dict[str, Any] = json.loads(kubectl(*args, "--show-managed-fields").stdout)
    return out


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Ready"), {})


@pytest.mark.parametrize("manager", ["argocd-controller", "kustomize-controller"])
def test_a_reapplied_repository_shows_no_drift(
    operator: Operator, cluster: Cluster, kubectl: Kubectl, k8s_api: client.ApiClient,
    namespace: str, unique: str, manager: str,
) -> None:  # fmt: skip
    core = client.CoreV1Api(k8s_api)
    node = cluster.node("a")
    cluster.pod(namespace, "web-0", node, {"app": "web"})
    guard = cpol("guard", namespace, {"app": "web"})
    cluster_wide = ccpol(f"etc-{unique}", {"team": unique}, {"app": "db"})  # targets nothing
    for m in (guard, cluster_wide):  # what the tools put in user-owned metadata
        m["metadata"]["labels"] = {"app.kubernetes.io/part-of": "policies"}
        m["metadata"]["annotations"] = {"example.com/tracking-id": f"policies:{m['kind']}"}
    manifests = "\n---\n".join(json.dumps(m) for m in (guard, cluster_wide))
    ssa = ("--server-side", f"--field-manager={manager}", "-f", "-")
    kubectl("apply", *ssa, input=manifests)

    applying = wait_for("Applying", lambda: (o := live(kubectl, guard))
                        and ready(o).get("reason") == "Applying" and o)  # fmt: skip
    found = read_bundle(core, operator, node)
    assert found is not None
    uid = applying["metadata"]["uid"]
    counters = [{"uid": uid, "generation": 1, "kind": "ContainerPolicy", "namespace": namespace,
                 "name": "guard", "blocked": 0, "alerted": 2, "logged": 0}]  # fmt: skip
    bundle_hash = found[1].metadata.annotations[HASH_ANNOTATION]
    cluster.report(node, _report("a-1", "kill", bundle_hash, counters))
    objs = [
        wait_for(f"{m['kind']} Ready", lambda m=m: (o := live(kubectl, m))  # type: ignore[misc]
                 and ready(o).get("status") == "True" and o)
        for m in (guard, cluster_wide)
    ]  # fmt: skip
    assert [ready(o)["reason"] for o in objs] == ["Applied", "NoTargets"]
    assert objs[0]["status"]["counts"]["alerted"] == 2  # the operator did write status

    # What the operator wrote: status only, through the status subresource.
    for obj, m in zip(objs, (guard, cluster_wide), strict=True):
        meta = obj["metadata"]
        assert meta["labels"] == m["metadata"]["labels"]
        assert meta["annotations"] == m["metadata"]["annotations"]
        assert not meta.get("finalizers") and not meta.get("ownerReferences")
        assert obj["spec"] == m["spec"] and meta["generation"] == 1
        entries = {(f["manager"], f.get("subresource", "")): f for f in meta["managedFields"]}
        owned = entries.pop((manager, ""))
        assert owned["operation"] == "Apply"
        assert {"f:spec", "f:metadata"} <= set(owned["fieldsV1"])
        assert entries, "the operator's status writes should show in managedFields"
        for (other, subresource), entry in entries.items():
            assert subresource == "status" and set(entry["fieldsV1"]) == {"f:status"}, other

    # A re-apply of the same repository: no diff, no write, the status stays.
    diff = kubectl("diff", "--server-side", f"--field-manager={manager}", "-f", "-",
                   input=manifests, check=False)  # fmt: skip
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stderr
    kubectl("apply", *ssa, input=manifests)
    time.sleep(1.0)  # the operator would react to a change within this
    again = [live(kubectl, m) for m in (guard, cluster_wide)]

    def applied(obj: dict[str, Any]) -> dict[str, Any]:
        """The tool's own managedFields entry: its time moves only when an apply changes
        something (the operator's status writes may move resourceVersion meanwhile)."""
        return next(f for f in obj["metadata"]["managedFields"]
                    if f["manager"] == manager and not f.get("subresource"))  # fmt: skip

    for before, after in zip(objs, again, strict=True):
        assert applied(after) == applied(before)
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert after["spec"] == before["spec"]

    # Argo CD's health check on what the operator wrote.
    assert argocd_health([applying]) == [("Progressing", f"Applying: {ready(applying)['message']}")]
    assert [h[0] for h in argocd_health(again)] == ["Healthy", "Healthy"]
