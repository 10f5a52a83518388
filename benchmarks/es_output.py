"""The Elasticsearch output's two rates (not a test):

    .venv/bin/python benchmarks/es_output.py [enrich|index] [--records 200000] [--docs 100000]

(`index` needs Elasticsearch: `eval "$(services/up)"` first; without `enrich` or `index`,
both run.)

`enrich`: ring-buffer record bytes → decode → ECS document → JSON (what the writer thread
sends; and with json.dumps alone, serialize's fallback), with a null sink, on one core:
records/s per record kind and for the default policy's mix (target with JSON: >= 50,000/s,
issues 14 and 19). `index`: documents through `ElasticOutput`
(bulk create, `--batch` per request) into this machine's Elasticsearch: documents/s from the
first write until Elasticsearch holds the last one. Data streams of the namespace `bench`
are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _figures import Figure, add_arguments, figure, report

from stockade.policy.compiler import compile_bundle
from stockade.policy.evaluator import ContainerFacts, KubernetesFacts
from stockade.policy.loader import iter_policies
from stockade.sensor.abi import (
    FILE_REC,
    PROC_REC,
    REC_HDR,
    ActionBits,
    Const,
    Hook,
    Op,
    RecordKind,
)
from stockade.sensor.containers import Container
from stockade.sensor.ecs import Applied, Host, document, serialize
from stockade.sensor.processes import ProcessCache
from stockade.sensor.records import CgroupRecord, FileRecord, ProcessRecord, decode

REPO = Path(__file__).resolve().parents[1]
CGROUP = 77
PROCESS, EXIT, FILE = RecordKind.PROCESS, RecordKind.EXIT, RecordKind.FILE
HOOK = {RecordKind.PROCESS: Hook.EXEC, RecordKind.EXIT: Hook.EXIT, RecordKind.FILE: Hook.OPENAT}


def raw_record(kind: RecordKind, seq: int) -> bytes:
    """A record as the kernel writes it: selector bit 0 matched, in the listed cgroup."""
    actions = ActionBits.ALERT if kind == RecordKind.FILE else ActionBits.LOG
    hdr = REC_HDR.pack_fields(
        version=Const.RECORD_VERSION, kind=kind, hook=HOOK[kind], actions=actions,
        ktime_ns=10**12 + seq, cgroup_id=CGROUP, generation=1, mntns=4026531840, pid=4242,
        tgid=4242, ppid=1, matched=(1).to_bytes(Const.MASK_WORDS * 8, "little"),
    )  # fmt: skip
    if kind == RecordKind.FILE:
        path = f"/var/www/html/uploads/file-{seq}.php".encode()
        return FILE_REC.pack_fields(
            h=hdr, ops=1 << Op.CREATE_EXECUTABLE, flags=0o101, mode=0o100755, path_len=len(path),
            comm=b"php-fpm",
        ) + path  # fmt: skip
    exe, cwd = b"/usr/sbin/nginx", b"/"
    args = b"nginx\0-g\0daemon off;\0"
    return PROC_REC.pack_fields(
        h=hdr, start_time_ns=10**11, parent_start_time_ns=1, sid=1, pgid=4242, comm=b"nginx",
        exe_len=len(exe), cwd_len=len(cwd), args_len=len(args),
    ) + exe + cwd + args  # fmt: skip


def event(raw: bytes) -> ProcessRecord | FileRecord:
    """`decode` as Enforcer._on_record uses it: cgroup records are not events."""
    rec = decode(raw)
    assert not isinstance(rec, CgroupRecord)
    return rec


def applied() -> Applied:
    bundle = compile_bundle(list(iter_policies([REPO / "examples/policies/default.yaml"])))
    container = Container(
        "/sys/fs/cgroup/c", CGROUP,
        ContainerFacts(image_full_name="docker.io/library/nginx", image_tag="1.27"),
        KubernetesFacts(cluster_id="c1", cluster_name="prod", namespace="shop",
                        pod_name="web-1", pod_labels={"app": "web", "tier": "front"}),
    )  # fmt: skip
    return Applied(1, bundle, {CGROUP: container})


def enrich(n: int) -> list[Figure]:
    host, app = Host.detect(), applied()
    mixes = {
        "exec": [PROCESS], "exit": [EXIT], "file": [FILE],
        "mix (2 exec : 2 exit : 1 file)": [PROCESS, EXIT] * 2 + [FILE],
    }  # fmt: skip
    figures = []
    for name, kinds in mixes.items():
        raws = [raw_record(kinds[i % len(kinds)], i) for i in range(n)]
        cache = ProcessCache()
        t0 = time.process_time()
        for raw in raws:  # what the ring-buffer reader does per record (Enforcer._on_record)
            rec = event(raw)
            cache.enrich(document(rec, app, "kill", host), rec)
        t1 = time.process_time()
        size = 0
        for raw in raws:  # and, on the writer thread, the JSON
            rec = event(raw)
            doc = document(rec, app, "kill", host)
            cache.enrich(doc, rec)
            size += len(serialize(doc))
        t2 = time.process_time()
        for raw in raws:  # json.dumps alone: what serialize falls back to (undecodable paths)
            rec = event(raw)
            doc = document(rec, app, "kill", host)
            cache.enrich(doc, rec)
            json.dumps(doc, separators=(",", ":")).encode()
        t3 = time.process_time()
        figures += [
            figure(f"enrich {name}: records to documents, one core", n / (t1 - t0), "records/s",
                   note=f"{n:,} records"),
            figure(f"enrich {name}: with JSON", n / (t2 - t1), "records/s", ">= 50000",
                   note=f"{size / n:.0f} bytes each"),
            figure(f"enrich {name}: with JSON, json.dumps alone", n / (t3 - t2), "records/s",
                   note="serialize's fallback"),
        ]  # fmt: skip
    return figures


def index(n: int, batch: int) -> list[Figure]:
    from stockade.sensor.elastic.config import ElasticConfig
    from stockade.sensor.elastic.writer import ElasticOutput

    env = os.environ
    ca = env.get("ELASTICSEARCH_CA_CERTS")
    cfg = ElasticConfig(env["ELASTICSEARCH_URL"], "bench", username=env.get(
        "ELASTICSEARCH_USERNAME"), password=env.get("ELASTICSEARCH_PASSWORD"),
        ca_certs=Path(ca) if ca else None)  # fmt: skip
    host, app = Host.detect(), applied()
    docs = [document(event(raw_record(RecordKind.PROCESS, i)), app, "kill", host) for i in range(n)]
    spool = Path(tempfile.mkdtemp(prefix="stk-bench-spool-"))
    out = ElasticOutput(cfg, spool, queue_max=n + 1, batch_docs=batch)
    try:
        t0 = time.monotonic()
        for d in docs:
            out.write(d)
        while (s := out.stats())["es_delivered"] + s["es_dead_letter"] < n:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        return [
            figure(f"index ({batch} per bulk)", n / elapsed, "documents/s",
                   note=f"{n:,} documents in {elapsed:.1f} s, {s['es_failed_requests']} failed "
                   f"requests, {s['es_spooled']} spooled")
        ]  # fmt: skip
    finally:
        out.close()
        client = cfg.client()
        client.options(ignore_status=404).indices.delete_data_stream(
            name="logs-cloud_defend.*-bench"
        )
        client.close()
        shutil.rmtree(spool)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", choices=["enrich", "index"], help="default: both")
    p.add_argument("--records", type=int, help="enrich: default 200,000 (--quick 5,000)")
    p.add_argument("--docs", type=int, help="index: default 100,000 (--quick 5,000)")
    p.add_argument("--batch", type=int, default=1000, help="documents per bulk request")
    add_arguments(p)
    args = p.parse_args()
    figures = []
    if args.what in (None, "enrich"):
        figures += enrich(args.records or (5_000 if args.quick else 200_000))
    if args.what in (None, "index"):
        figures += index(args.docs or (5_000 if args.quick else 100_000), args.batch)
    report(args, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
