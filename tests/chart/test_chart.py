"""charts/stockade: lint, render, every object past the real apiserver's admission, install."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
import yaml
from kubernetes import client

from stockade.operator.kube import DEFAULT_WRITERS
from tests.integration.conftest import Kubectl

from .conftest import CHART, REPO, Helm, dry_run

pytestmark = pytest.mark.integration

# Values a user would change: another release name, Elasticsearch with basic auth and a CA,
# no default policy, a ServiceMonitor, images from a mirror, no own-node admission policy.
CUSTOM = [
    "--set", "clusterName=prod-eu-1",
    "--set", "defaultPolicy.enabled=false",
    "--set", "operator.replicas=3",
    "--set", "operator.writeConcurrency=48",
    "--set", "operator.image.repository=mirror.example/stockade-operator",
    "--set", "sensor.image.tag=0.1.0-rc1",
    "--set", "sensor.output=elasticsearch",
    "--set", "sensor.ownNodeReportOnly=false",
    "--set", "sensor.cgroupRoot=/sys/fs/cgroup/unified",
    "--set", "elasticsearch.secretName=es-conn",
    "--set", "elasticsearch.auth=basic",
    "--set", "elasticsearch.ca=true",
    "--set", "serviceMonitor.enabled=true",
]  # fmt: skip
API_KEY = ["--set", "sensor.output=elasticsearch", "--set", "elasticsearch.secretName=es-conn"]


def chart_meta() -> dict[str, Any]:
    meta: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return meta


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, [o["metadata"]["name"] for o in found]
    return found[0]


def container(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, kind)["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    first: dict[str, Any] = spec["containers"][0]
    return first


def test_chart_follows_the_project() -> None:
    """The images' default tag is the project's version; the default policy is the seed's."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart_meta()["appVersion"] == project
    shipped = (CHART / "files" / "default-policy.yaml").read_text()
    assert shipped == (REPO / "examples" / "policies" / "default.yaml").read_text(), (
        "charts/stockade/files/default-policy.yaml differs from examples/policies/default.yaml:"
        " copy it"
    )


@pytest.mark.parametrize("values", [[], CUSTOM], ids=["default", "custom"])
def test_helm_lint(helm: Helm, values: list[str]) -> None:
    helm("lint", str(CHART), "--strict", "--kube-version", "1.35.0", *values)


def test_defaults_render_what_the_install_needs(helm: Helm) -> None:
    objects = helm.template("stockade", "stockade-system")
    version = chart_meta()["appVersion"]

    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    op = container(objects, "Deployment")
    assert op["image"] == f"ghcr.io/stockade-dev/stockade-operator:{version}"
    assert pod["serviceAccountName"] == "stockade-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert op["securityContext"]["readOnlyRootFilesystem"] is True
    assert op["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"--namespace=stockade-system", "--lease=stockade-operator",
            f"--write-concurrency={DEFAULT_WRITERS}"} <= set(op["args"])  # fmt: skip
    assert op["livenessProbe"]["httpGet"]["port"] == "metrics" and op["readinessProbe"]
    assert op["resources"]["requests"] and op["resources"]["limits"]
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()

    daemonset = one(objects, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    sensor = container(objects, "DaemonSet")
    assert sensor["image"] == f"ghcr.io/stockade-dev/stockade-sensor:{version}"
    assert pod["serviceAccountName"] == "stockade-sensor"
    assert pod["hostPID"] is True and pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1}
    caps = sensor["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_RESOURCE"]}
    assert sensor["securityContext"]["privileged"] is False
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in (
        sensor["env"]
    )
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {"/var/lib/stockade/sensor", "/sys/fs/cgroup", "/sys/kernel/tracing",
                          "/sys/kernel/btf", "/sys/kernel/security", "/etc/machine-id"}  # fmt: skip
    writable = [m["mountPath"] for m in sensor["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/var/lib/stockade/sensor"]
    assert {"--output=jsonl:-", "--cgroup-root=/host/sys/fs/cgroup"} <= set(sensor["args"])
    assert sensor["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sensor["livenessProbe"]["httpGet"]["path"] == "/healthz"

    policy = one(objects, "ClusterContainerPolicy")
    assert policy["metadata"]["name"] == "stockade-default"
    seed = yaml.safe_load((REPO / "examples" / "policies" / "default.yaml").read_text())
    assert policy["spec"] == seed
    assert one(objects, "ValidatingAdmissionPolicy")
    assert not [o for o in objects if o["kind"] == "ServiceMonitor"]


@pytest.mark.parametrize("auth", ["basic", "apiKey"])
def test_elasticsearch_comes_from_the_secret_never_the_command_line(helm: Helm, auth: str) -> None:
    objects = helm.template("s", "sec", *(CUSTOM if auth == "basic" else API_KEY))
    sensor = container(objects, "DaemonSet")
    env = {e["name"]: e for e in sensor["env"]}
    url = env["ELASTICSEARCH_URL"]["valueFrom"]["secretKeyRef"]
    assert url == {"name": "es-conn", "key": "url"}
    volume = next(v for v in one(objects, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "elasticsearch")  # fmt: skip
    keys = {item["key"] for item in volume["secret"]["items"]}
    if auth == "basic":
        assert env["ELASTICSEARCH_USERNAME"]["valueFrom"]["secretKeyRef"]["key"] == "username"
        assert env["ELASTICSEARCH_PASSWORD_FILE"]["value"] == "/etc/stockade/elasticsearch/password"
        assert env["ELASTICSEARCH_CA_CERTS"]["value"] == "/etc/stockade/elasticsearch/ca.crt"
        assert keys == {"password", "ca.crt"}
    else:
        assert env["ELASTICSEARCH_API_KEY_FILE"]["value"] == "/etc/stockade/elasticsearch/api-key"
        assert "ELASTICSEARCH_CA_CERTS" not in env and keys == {"api-key"}
    assert "--output=elasticsearch" in sensor["args"]
    assert not [a for a in sensor["args"] if "es-conn" in a or "password" in a or "key" in a]


def test_custom_values_render(helm: Helm) -> None:
    objects = helm.template("edge", "sec", *CUSTOM)
    assert not [o for o in objects if o["kind"] in ("ClusterContainerPolicy",
                                                    "ValidatingAdmissionPolicy")]  # fmt: skip
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
    assert container(objects, "Deployment")["image"].startswith("mirror.example/stockade-operator:")
    assert {"--cluster=prod-eu-1", "--write-concurrency=48"} <= set(
        container(objects, "Deployment")["args"]
    )
    assert container(objects, "DaemonSet")["image"].endswith("/stockade-sensor:0.1.0-rc1")
    cgroup = next(v for v in one(objects, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "cgroup")  # fmt: skip
    assert cgroup["hostPath"]["path"] == "/sys/fs/cgroup/unified"
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    services = [o for o in objects if o["kind"] == "Service"]
    assert len(monitors) == 2
    for monitor in monitors:  # each selects one metrics Service by its labels, by port name
        selected = [s for s in services if monitor["spec"]["selector"]["matchLabels"].items()
                    <= s["metadata"]["labels"].items()]  # fmt: skip
        assert len(selected) == 1
        assert selected[0]["spec"]["ports"][0]["name"] == monitor["spec"]["endpoints"][0]["port"]


@pytest.mark.parametrize(
    "values, message",
    [
        (["--set", "sensor.output=elasticsearch"], "secretName"),
        (["--set", "operator.replica=3"], "replica"),
        (["--set", "elasticsearch.auth=token"], "auth"),
        (["--set", "sensor.stateDir=relative/dir"], "stateDir"),
        (["--set", "operator.writeConcurrency=0"], "writeConcurrency"),
    ],
    ids=[
        "elasticsearch-without-secret",
        "misspelt-key",
        "unknown-auth",
        "relative-state-dir",
        "no-writes",
    ],
)
def test_the_schema_refuses_values_that_cant_work(
    helm: Helm, values: list[str], message: str
) -> None:
    proc = helm("template", "x", str(CHART), "--kube-version", "1.35.0", *values, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("values", [[], CUSTOM], ids=["default", "custom"])
def test_every_rendered_object_passes_server_side_dry_run(
    helm: Helm, kubectl: Kubectl, operator_crds: None, namespace: str, values: list[str]
) -> None:
    """What a GitOps tool would apply: every object past admission, schemas and RBAC's
    escalation check. ServiceMonitor's CRD isn't installed here (test_custom_values_render)."""
    objects = helm.template("dry", namespace, *values)
    # and each workload's pod as its controller would create it: pod-level admission
    # (the priority class exists and may be used here, the service account's name)
    pods = [
        {"apiVersion": "v1", "kind": "Pod", "spec": o["spec"]["template"]["spec"],
         "metadata": {"name": o["metadata"]["name"], "namespace": namespace,
                      "labels": o["spec"]["template"]["metadata"]["labels"]}}
        for o in objects if o["kind"] in ("Deployment", "DaemonSet")
    ]  # fmt: skip
    dry_run(kubectl, [o for o in objects if o["kind"] != "ServiceMonitor"] + pods)


def test_helm_install_upgrade_and_uninstall(
    helm: Helm, k8s_api: client.ApiClient, kubectl: Kubectl, operator_crds: None, namespace: str
) -> None:
    name = f"inst-{namespace[-8:]}"
    notes = helm("install", name, str(CHART), "--namespace", namespace).stdout
    assert "kubectl get nodepolicyreports" in notes
    status = helm("status", name, "--namespace", namespace, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")
    apps = client.AppsV1Api(k8s_api)
    assert apps.read_namespaced_deployment(f"{name}-operator", namespace).spec.replicas == 2
    assert apps.read_namespaced_daemon_set(f"{name}-sensor", namespace)
    cluster_wide = [
        f"clustercontainerpolicy/{name}-default", f"clusterrole/{name}-operator",
        f"clusterrole/{name}-sensor", f"clusterrolebinding/{name}-sensor",
        f"validatingadmissionpolicy/{name}-sensor-own-node-report",
    ]  # fmt: skip
    assert len(kubectl("get", *cluster_wide, "-o", "name").stdout.split()) == len(cluster_wide)
    # an upgrade that opts out of the default policy removes it, and only it
    helm("upgrade", name, str(CHART), "--namespace", namespace, "--reuse-values",
         "--set", "defaultPolicy.enabled=false")  # fmt: skip
    left = kubectl("get", *cluster_wide, "-o", "name", "--ignore-not-found").stdout.split()
    assert left == [f"clusterrole.rbac.authorization.k8s.io/{name}-operator",
                    f"clusterrole.rbac.authorization.k8s.io/{name}-sensor",
                    f"clusterrolebinding.rbac.authorization.k8s.io/{name}-sensor",
                    f"validatingadmissionpolicy.admissionregistration.k8s.io/"
                    f"{name}-sensor-own-node-report"]  # fmt: skip
    helm("uninstall", name, "--namespace", namespace)
    gone = kubectl("get", *cluster_wide, "-o", "name", "--ignore-not-found").stdout
    assert gone == ""
