"""The node's containers: pods from the apiserver joined to cgroups by the kubelet's names."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.sensor.pods import NodeContainers, PodError, image_facts, pod_facts

UID = "0b6d6a6e-6f0a-4c3e-9d55-2f7f3f0f9a11"
CID = "a" * 64
POD_SLICE = f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice"
POD_CG = f"/kubepods.slice/kubepods-besteffort.slice/{POD_SLICE}"
CTR_CG = f"{POD_CG}/cri-containerd-{CID}.scope"


def pod(
    labels: dict[str, str] | None = None, statuses: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "uid": UID,
            "namespace": "shop",
            "name": "web-1",
            "labels": labels if labels is not None else {"app": "web"},
            "ownerReferences": [{"kind": "ReplicaSet", "controller": True, "name": "web"}],
        },
        "status": {"podIP": "10.0.0.7", "containerStatuses": statuses or []},
    }


RUNNING = [
    {"name": "app", "containerID": f"containerd://{CID}", "image": "docker.io/library/nginx:1.25"}
]


@pytest.mark.parametrize(
    ("image", "facts"),
    [
        ("docker.io/library/nginx:1.25", ("docker.io/library/nginx", "nginx", "1.25")),
        ("registry:5000/team/app@sha256:" + "0" * 64, ("registry:5000/team/app", "app", None)),
        ("registry:5000/team/app:v1@sha256:" + "0" * 64, ("registry:5000/team/app", "app", "v1")),
        ("nginx", ("nginx", "nginx", None)),
        ("sha256:" + "0" * 64, (None, None, None)),
        ("", (None, None, None)),
        ("docker.io/library/NGINX:1", (None, None, None)),
    ],
)
def test_image_facts(image: str, facts: tuple[str | None, ...]) -> None:
    assert image_facts(image) == facts


def test_pod_level_facts_hold_before_the_status_names_the_container() -> None:
    table = NodeContainers(cluster_name="prod")
    assert table.add_cgroup(2, POD_CG) == set()  # no pod known yet: nothing listed
    assert table.add_cgroup(3, CTR_CG) == set()
    assert table.put_pod(pod_facts(pod())) == {2, 3}
    workload = table.listed[3].workload
    assert (workload.namespace, workload.pod_name, workload.pod_labels) == (
        "shop",
        "web-1",
        {"app": "web"},
    )
    assert workload.image_name is None and workload.cluster_name == "prod"
    assert table.put_pod(pod_facts(pod(statuses=RUNNING))) == {3}  # the pod's own: unchanged
    named = table.listed[3]
    assert (named.container.name, named.container.image_name, named.container.image_tag) == (
        "app",
        "nginx",
        "1.25",
    )
    assert table.set_cluster("kube-system-uid", "prod") == {2, 3}
    assert table.listed[3].workload.cluster_id == "kube-system-uid"


def test_relabel_delete_and_a_full_list() -> None:
    table = NodeContainers()
    table.add_cgroup(3, CTR_CG)
    table.put_pod(pod_facts(pod()))
    assert table.put_pod(pod_facts(pod(labels={"app": "db"}))) == {3}
    assert table.listed[3].workload.pod_labels == {"app": "db"}
    assert table.put_pod(pod_facts(pod(labels={"app": "db"}))) == set()  # the same again
    assert table.replace_pods([]) == {3} and table.listed == {}
    table.put_pod(pod_facts(pod()))
    assert table.remove_cgroup(3) == {3} and 3 not in table.listed


def test_restored_containers_stay_listed_until_the_pods_are_listed() -> None:
    """A restarted sensor's cached containers: what comes before the pod list (the cluster's
    id from its lookup, its name from the bundle's annotation, a scan) never unlists them;
    the list decides."""
    before = NodeContainers(cluster_name="prod", cluster_id="ks-uid")
    before.add_cgroup(2, POD_CG)
    before.add_cgroup(3, CTR_CG)
    before.put_pod(pod_facts(pod(statuses=RUNNING)))
    cached = list(before.listed.values())

    table = NodeContainers()
    table.add_cgroup(2, POD_CG)
    table.add_cgroup(7, CTR_CG)  # the container's directory made again: another inode
    kept = table.restore(cached)
    assert set(kept) == {2, 7} and kept[7].cgroup_id == 7
    assert kept[7].workload == cached[1].workload  # decided as before the restart
    assert table.set_cluster("ks-uid", "prod") == set()
    assert table.set_cluster("other-uid", "prod") == set() and set(table.listed) == {2, 7}
    assert table.replace_cgroups([(2, POD_CG), (7, CTR_CG)]) == set()
    assert table.replace_pods([pod_facts(pod(statuses=RUNNING))]) == {2, 7}  # the new id
    assert table.listed[7].workload.cluster_id == "other-uid"
    assert table.replace_pods([]) == {2, 7} and table.listed == {}


def test_a_restored_container_whose_pod_is_gone_leaves_with_the_first_list() -> None:
    table = NodeContainers()
    table.add_cgroup(3, CTR_CG)
    cached = NodeContainers(cgroups=dict(table.cgroups))
    cached.put_pod(pod_facts(pod()))
    assert set(table.restore(cached.listed.values())) == {3}
    assert table.replace_pods([]) == {3} and table.listed == {}
    assert table.set_cluster("ks-uid", None) == set()  # no cached facts come back


def test_cgroups_that_are_not_a_kubelets_are_ignored() -> None:
    table = NodeContainers()
    table.put_pod(pod_facts(pod()))
    for path in (
        "/system.slice/containerd.service",
        f"{POD_CG}/cri-containerd-{'z' * 64}.scope",
        f"/kubepods.slice/cri-containerd-{CID}.scope",
        f"/user.slice/{POD_SLICE}",
    ):
        assert table.add_cgroup(9, path) == set(), path
    assert table.listed == {}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"metadata": {"uid": UID, "namespace": "shop"}},
        {"metadata": {"uid": UID, "namespace": "shop", "name": "p", "labels": {"a": 1}}},
        {"metadata": {"uid": UID, "namespace": "shop", "name": "p"}, "status": []},
        {
            "metadata": {"uid": UID, "namespace": "shop", "name": "p"},
            "status": {"containerStatuses": [{"name": 3, "containerID": "containerd://x"}]},
        },
    ],
)
def test_a_pod_object_that_is_not_one_is_refused_with_a_reason(body: dict[str, Any]) -> None:
    with pytest.raises(PodError):
        pod_facts(body)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "metadata": st.dictionaries(
                st.sampled_from(["uid", "namespace", "name", "labels", "annotations",
                                 "ownerReferences"]), _JSON, max_size=6),
            "status": st.dictionaries(
                st.sampled_from(["podIP", *(s for s in ("containerStatuses",
                                 "initContainerStatuses"))]), _JSON, max_size=3) | _JSON,
        },
    )
)  # fmt: skip
def test_any_pod_object_is_read_or_refused_never_crashes(body: dict[str, Any]) -> None:
    with contextlib.suppress(PodError):
        pod_facts(body)


def _mirror(uid: str, target: str, created: str, labels: dict[str, str]) -> dict[str, Any]:
    body = pod(labels=labels)
    body["metadata"].update(
        uid=uid,
        namespace="sandbox",
        name=f"mirror-{uid[:4]}",
        creationTimestamp=created,
        annotations={"kubernetes.io/config.mirror": target},
    )
    return body


def test_a_mirror_annotation_never_takes_another_pods_cgroups() -> None:
    # Any pod creator can write kubernetes.io/config.mirror: naming a running pod's uid must
    # neither give that pod's containers the forger's facts nor, once the forger is deleted
    # (as the kubelet deletes an orphaned mirror pod), leave them without any.
    forger = "1" * 8 + "-1111-1111-1111-" + "1" * 12
    table = NodeContainers()
    table.add_cgroup(3, CTR_CG)
    table.put_pod(pod_facts(_mirror(forger, UID, "2026-01-01T00:00:00Z", {"app": "db"})))
    table.put_pod(pod_facts(pod()))
    relabelled = _mirror(forger, UID, "2026-01-01T00:00:00Z", {"x": "y"})
    assert table.put_pod(pod_facts(relabelled)) == set()
    assert (table.listed[3].workload.namespace, table.listed[3].workload.pod_labels) == (
        "shop",
        {"app": "web"},
    )
    assert table.remove_pod(forger) == set() and table.listed[3].workload.pod_name == "web-1"
    assert table.replace_pods([pod_facts(pod())]) == set()


def test_a_static_pods_cgroups_get_its_oldest_mirror_pods_facts() -> None:
    static = "c" * 32  # the kubelet's uid for a static pod: its cgroups carry this one
    cgroup = f"/kubepods.slice/kubepods-pod{static}.slice"
    real = "2" * 8 + "-2222-2222-2222-" + "2" * 12
    table = NodeContainers()
    table.add_cgroup(4, cgroup)
    assert table.put_pod(pod_facts(_mirror(real, static, "2026-01-01T00:00:00Z", {"c": "etcd"})))
    later = "3" * 8 + "-3333-3333-3333-" + "3" * 12
    assert table.put_pod(pod_facts(_mirror(later, static, "2026-02-01T00:00:00Z", {}))) == set()
    assert table.listed[4].workload.pod_labels == {"c": "etcd"}
    assert table.remove_pod(later) == set()
    assert table.remove_pod(real) == {4} and 4 not in table.listed


def test_a_known_pod_is_unmade_until_its_cgroup_is_seen() -> None:
    """What the kernel lists a pod's cgroup with in its mkdir: the facts the sensor lists it
    with once it reads the record, under every name a kubelet may give it."""
    table = NodeContainers(cluster_name="prod")
    assert table.unmade() == {}
    table.put_pod(pod_facts(pod()))
    unmade = table.unmade()
    assert POD_SLICE in unmade and f"pod{UID}" in unmade and len(unmade) == 4
    table.add_cgroup(3, CTR_CG)  # a container's cgroup is not the pod's
    assert table.unmade() == unmade
    table.add_cgroup(2, POD_CG)
    assert unmade[POD_SLICE].workload == table.listed[2].workload
    assert table.unmade() == {}
    table.remove_cgroup(2)
    table.remove_pod(UID)
    assert table.unmade() == {}
