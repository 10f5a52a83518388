"""Outages: Elasticsearch, the operator or the sensor stopped and back — no alert lost or
doubled, enforcement never paused, nothing to redo by hand."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Stack, Story, run
from .manifests import container_policy, exec_of

pytestmark = pytest.mark.kernel

WEB = {"app": "web"}
BURST = 300


def test_elasticsearch_stopped_during_a_burst_every_alert_arrives_once(
    stack: Stack, namespaces: Callable[..., str], story: Story, tool: Path
) -> None:
    ns = namespaces("es-down")
    web = stack.start_pod(ns, "web-1", WEB)
    stack.apply(container_policy("alert-tool", ns, WEB, **exec_of(tool, actions=("alert",))))
    story(f"pod {ns}/web-1; every exec of {tool.name} alerted")
    story.wait("READY True, NODES 1/1", lambda: (r := stack.row(ns, "alert-tool"))["READY"]
               == "True" and r["NODES"] == "1/1")  # fmt: skip

    story(f"a burst of {BURST} execs in the container; Elasticsearch stopped 0.5 s into it")
    loop = f"for i in $(seq {BURST}); do {tool}; sleep 0.01; done"
    burst = threading.Thread(target=run, args=(web, ["sh", "-c", loop]))
    burst.start()
    try:
        time.sleep(0.5)
        stack.stop_elasticsearch()
        story("  Elasticsearch stopped")
        burst.join()
        story("  burst done; Elasticsearch started again (services/up)")
    finally:
        stack.start_elasticsearch()  # also when the test fails: the next ones need it
    story("  Elasticsearch up")
    alerts = story.wait(
        f"all {BURST} alerts in logs-cloud_defend.alerts-default",
        lambda: len(a := stack.alerts(ns, process__executable=str(tool))) >= BURST and a,
        timeout=120,
    )
    time.sleep(2)  # anything still on its way (a duplicate) would be in by now
    alerts = stack.alerts(ns, process__executable=str(tool))
    ids = Counter(a["event"]["id"] for a in alerts)
    story(f"  {len(alerts)} alerts, {len(ids)} distinct event ids")
    assert len(alerts) == BURST and len(ids) == BURST
    assert all(a["_id"] == a["event"]["id"] for a in alerts)
    spooled = [m for m in (line["message"] for line in stack.sensor_log())
               if "spool" in m.lower()]  # fmt: skip
    story(f"  the sensor said: {spooled[-2:]}")


def test_operator_stopped_enforcement_goes_on_and_new_pods_are_covered_when_it_returns(
    stack: Stack, namespaces: Callable[..., str], story: Story, tool: Path
) -> None:
    ns = namespaces("op-down")
    web = stack.start_pod(ns, "web-1", WEB)
    stack.apply(container_policy("no-tool", ns, WEB, **exec_of(tool)))
    story(f"pod {ns}/web-1; {tool.name} blocked for app=web")
    story.wait("in force", lambda: stack.blocked(run(web, [str(tool)])))

    story("the operator stopped")
    stack.operator.stop()
    try:
        assert stack.blocked(run(web, [str(tool)]))
        story(f"  {tool.name} in web-1: still stopped")
        web2 = stack.start_pod(ns, "web-2", WEB)
        story.wait("a new app=web pod covered by the bundle in force",
                   lambda: stack.blocked(run(web2, [str(tool)])))  # fmt: skip
        other = namespaces("op-down-new")
        api = stack.start_pod(other, "api-1", {"app": "api"})
        stack.apply(container_policy("no-tool", other, {"app": "api"}, **exec_of(tool)))
        story(f"a new policy and pod in {other} while it is away")
        time.sleep(1)
        assert run(api, [str(tool)]) == 0
        story(f"  {tool.name} in {other}/api-1: runs (nobody compiles the new policy)")
    finally:
        story("the operator started again")
        stack.operator.start()
    story.wait(f"{other}/api-1 covered", lambda: stack.blocked(run(api, [str(tool)])))
    row = story.wait("its READY True, NODES 1/1", lambda: (r := stack.row(other, "no-tool"))
                     ["READY"] == "True" and r["NODES"] == "1/1" and r)  # fmt: skip
    story(f"  {row}")
    assert stack.blocked(run(web, [str(tool)]))


def test_a_restarted_sensor_enforces_its_cached_bundle_at_once(
    stack: Stack, namespaces: Callable[..., str], story: Story, tool: Path, tmp_path: Path
) -> None:
    ns = namespaces("sensor-down")
    web = stack.start_pod(ns, "web-1", WEB)
    stack.apply(container_policy("no-tool", ns, WEB, **exec_of(tool)))
    story(f"pod {ns}/web-1; {tool.name} blocked for app=web")
    story.wait("in force", lambda: stack.blocked(run(web, [str(tool)])))

    story("the sensor stopped (SIGTERM), then started where the apiserver doesn't answer")
    assert stack.sensor.stop() == 0
    away = tmp_path / "away.kubeconfig"
    config = json.loads(stack.kubectl("config", "view", "--raw", "-o", "json").stdout)
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = "https://127.0.0.1:9"
    away.write_text(json.dumps(config))
    t0 = time.monotonic()
    stack.start_sensor(kubeconfig=str(away))
    story(f"  ready in {time.monotonic() - t0:.2f} s")
    try:
        assert stack.blocked(run(web, [str(tool)]))
        applied = [m for m in (line["message"] for line in stack.sensor_log())
                   if "applied generation" in m][-1]  # fmt: skip
        story(f"  {tool.name}: stopped at once; the sensor: {applied}")
        assert "from the cache" in applied
    finally:
        story("the sensor restarted with the apiserver")
        stack.sensor.stop()
        stack.start_sensor()
    assert stack.blocked(run(web, [str(tool)]))  # the first exec after /readyz: killed
    story(f"  {tool.name}: stopped at once again")
    row = story.wait("BLOCKED 3 (one per sensor instance, none lost)", lambda: (
        r := stack.row(ns, "no-tool"))["BLOCKED"] == "3" and r)  # fmt: skip
    story(f"  {row}")
