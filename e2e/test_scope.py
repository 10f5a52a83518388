"""Scope: a policy reaches the pods its podSelector names, and a cluster-wide one only the
namespaces its namespaceSelector names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Stack, Story
from .manifests import cluster_policy, container_policy, no_new_executables
from .test_drift import Writer

pytestmark = pytest.mark.kernel


def test_a_policy_for_app_web_leaves_an_app_db_container_alone(
    stack: Stack, namespaces: Callable[..., str], story: Story, tmp_path: Path
) -> None:
    ns = namespaces("scope")
    web = stack.start_pod(ns, "web-1", {"app": "web"})
    db = stack.start_pod(ns, "db-1", {"app": "db"})
    writer = Writer(tmp_path / "drift")
    story(f"pods {ns}/web-1 (app=web) and {ns}/db-1 (app=db); drift blocked for app=web")
    stack.apply(container_policy("web-only", ns, {"app": "web"},
                                 **no_new_executables(writer.directory)))  # fmt: skip
    story.wait("the web container's write stopped", lambda: stack.blocked(writer.attempt(web)[0]))
    code, path = writer.attempt(db)
    story(f"the db container's write: exit {code}")
    assert code == 0 and path.exists()
    alerts = story.wait("the db write's alert (the default policy's)", lambda: stack.alerts(
        ns, file__path=str(path)))  # fmt: skip
    assert alerts[0]["orchestrator"]["resource"]["name"] == "db-1"
    assert alerts[0]["cloud_defend"]["outcome"] == "allowed"
    assert "web-only" not in [p["name"] for p in alerts[0]["cloud_defend"]["policies"]]


def test_a_cluster_policy_reaches_only_the_namespaces_it_selects(
    stack: Stack, namespaces: Callable[..., str], story: Story, tmp_path: Path
) -> None:
    team = {"e2e.stockade.dev/team": stack.run_id}
    inside = namespaces("team", labels=team)
    outside = namespaces("other")
    pods = {ns: stack.start_pod(ns, "api-1", {"app": "api"}) for ns in (inside, outside)}
    writer = Writer(tmp_path / "drift")
    name = f"{stack.run_id}-team-drift"
    story(f"api-1 in {inside} (labelled {team}) and in {outside}; a ClusterContainerPolicy "
          "with that namespaceSelector")  # fmt: skip
    stack.apply(cluster_policy(name, team, **no_new_executables(writer.directory)))
    try:
        story.wait(f"the write stopped in {inside}", lambda: stack.blocked(
            writer.attempt(pods[inside])[0]))  # fmt: skip
        code, path = writer.attempt(pods[outside])
        story(f"the write in {outside}: exit {code}")
        assert code == 0 and path.exists()
        row = story.wait("kubectl get clustercontainerpolicies: NODES 1/1, BLOCKED 1",
                         lambda: (r := stack.row(None, name))["NODES"] == "1/1"
                         and r["BLOCKED"] == "1" and r)  # fmt: skip
        story(f"  {row}")
    finally:
        stack.kubectl("delete", "clustercontainerpolicy", name, "--ignore-not-found")
