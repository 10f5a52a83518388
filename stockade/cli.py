"""The `stockade` command line."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockade.local import cli as local_cli
from stockade.operator.heartbeats import DEFAULT_AFTER as DEFAULT_SILENT_AFTER
from stockade.policy.bundle import encode, render_json_schema
from stockade.policy.compiler import CompileError, Pod, compile_bundle
from stockade.policy.convert import MAX_OBJECT_NAME, OBJECT_NAME, convert, object_name
from stockade.policy.crd import all_crds, write_crds
from stockade.policy.document import BARE_KIND
from stockade.policy.evaluator import Event, evaluate
from stockade.policy.loader import iter_policies, load_file
from stockade.policy.model import NAMESPACE_PATTERN, Action
from stockade.policy.rules import Severity
from stockade.policy.source import (
    SourceError,
    YamlDocument,
    format_path,
    read_json,
    read_yaml,
    shown,
)
from stockade.sensor import cli as sensor_cli
from stockade.sensor.elastic import setup as es_setup


class UsageError(Exception):
    """Bad input named in one line; the CLI prints it and exits 1."""


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            loaded = load_file(path)
        except SourceError as exc:
            print(exc)
            failed = True
            continue
        policies = 0
        for doc in loaded:
            if doc.skipped:
                print(f"{path}: warning: skipped {doc.skipped} (line {doc.line})", file=sys.stderr)
                continue
            for finding in doc.findings:
                warning = finding.severity == Severity.WARNING
                print(finding.render(str(path)), file=sys.stderr if warning else sys.stdout)
            failed |= not doc.valid
            policies += doc.valid
        if not loaded or all(d.skipped for d in loaded):
            print(f"{path}: document: no ContainerPolicy, ClusterContainerPolicy or bare policy")
            failed = True
        elif policies == len([d for d in loaded if not d.skipped]):
            print(
                f"{path}: valid ({policies} {'policy' if policies == 1 else 'policies'})",
                file=sys.stderr,
            )
    return 1 if failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
    path: Path = args.file
    name = args.name or object_name(path.stem)
    if name is None or not OBJECT_NAME.match(name) or len(name) > MAX_OBJECT_NAME:
        raise UsageError(
            f"{path}: {shown(name or path.stem)} is not a Kubernetes object name "
            "(lowercase letters, digits, '-' and '.'); give one with --name"
        )
    if args.namespace is not None and not re.match(NAMESPACE_PATTERN, args.namespace):
        raise UsageError(f"--namespace {shown(args.namespace)} is not a namespace name")
    loaded = [doc for doc in load_file(path) if not doc.skipped]
    if len(loaded) != 1:
        raise UsageError(f"{path}: convert takes a file with one policy; it holds {len(loaded)}")
    doc = loaded[0]
    errors = [f for f in doc.findings if f.severity == Severity.ERROR]
    if errors:
        for finding in errors:
            print(finding.render(str(path)))
        return 1
    assert doc.document is not None
    if doc.document.kind != BARE_KIND:
        raise UsageError(f"{path}: already a {doc.document.kind}; nothing to convert")
    print(convert(doc.document.policy, name, str(path), args.namespace), end="")
    return 0


def _first_error(exc: ValidationError, source: Path, doc: YamlDocument, what: str) -> UsageError:
    """`FILE: field.path: message (line N)` for the first problem pydantic found."""
    error = exc.errors()[0]
    loc = tuple(p for p in error["loc"] if isinstance(p, str | int))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return UsageError(f"{source}: {format_path(loc) or what}: {message} (line {doc.line_of(loc)})")


def _read_event(path: Path) -> Event:
    doc = read_json(path)
    try:
        return Event.model_validate(doc.data)
    except ValidationError as exc:
        raise _first_error(exc, path, doc, "event") from None


def cmd_explain(args: argparse.Namespace) -> int:
    documents = list(iter_policies([args.policy]))
    if args.name:
        documents = [d for d in documents if d.name == args.name]
    if len(documents) != 1:
        names = ", ".join(d.key for d in documents) or "none"
        raise UsageError(
            f"{args.policy}: explain takes one policy, found {len(documents)} "
            f"({names}); pick one with --name"
        )
    event = _read_event(args.event)
    decision = evaluate(documents[0], event)
    out: dict[str, Any] = {
        "matched_selectors": list(decision.matched_selectors),
        "actions": [a.value for a in Action if a in decision.actions],
    }
    if decision.would_block:
        out["would_block"] = True
    print(json.dumps(out))
    return 0


class KubernetesObject(BaseModel):
    """The fields of a Pod, Namespace or List that `compile --pods` reads; others pass."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    class Metadata(BaseModel):
        model_config = ConfigDict(extra="ignore")
        name: str = Field(min_length=1)
        namespace: str = "default"
        labels: dict[str, str] | None = None

    class Spec(BaseModel):
        model_config = ConfigDict(extra="ignore", populate_by_name=True)
        node_name: str | None = Field(default=None, alias="nodeName")

    kind: str
    metadata: Metadata | None = None
    spec: Spec | None = None
    items: list[KubernetesObject] | None = None


def _pods_and_namespaces(
    paths: Sequence[Path], node: str | None
) -> tuple[list[Pod], dict[str, dict[str, str]]]:
    """Pods (optionally only those bound to `node`) and namespace labels from YAML/JSON."""
    pods: list[Pod] = []
    namespaces: dict[str, dict[str, str]] = {}

    def visit(
        obj: KubernetesObject, source: Path, doc: YamlDocument, loc: tuple[str | int, ...]
    ) -> None:
        where = f"{source}: {format_path(loc) or 'document'}"
        meta = obj.metadata
        if obj.kind.endswith("List"):
            for index, item in enumerate(obj.items or []):
                visit(item, source, doc, (*loc, "items", index))
        elif obj.kind not in ("Pod", "Namespace"):
            kind = shown(obj.kind) if obj.kind else "an object without kind"
            raise UsageError(
                f"{where}: {kind} is neither a Pod nor a Namespace (line {doc.line_of(loc)})"
            )
        elif meta is None:
            raise UsageError(
                f"{where}.metadata: required field is missing (line {doc.line_of(loc)})"
            )
        elif obj.kind == "Namespace":
            namespaces[meta.name] = meta.labels or {}
        elif node is None or (obj.spec is not None and obj.spec.node_name == node):
            pods.append(Pod(meta.namespace, meta.name, meta.labels or {}))

    for path in paths:
        for doc in read_yaml(path):
            try:
                obj = KubernetesObject.model_validate(doc.data)
            except ValidationError as exc:
                raise _first_error(exc, path, doc, "document") from None
            visit(obj, path, doc, ())
    return pods, namespaces


def cmd_compile(args: argparse.Namespace) -> int:
    documents = list(iter_policies(args.policies))
    pods: list[Pod] | None = None
    namespaces: dict[str, dict[str, str]] | None = None
    if args.pods:
        pods, namespaces = _pods_and_namespaces(args.pods, args.node)
    try:
        bundle = compile_bundle(documents, node=args.node, pods=pods, namespace_labels=namespaces)
    except CompileError as exc:
        raise UsageError(f"can't compile: {exc}") from None
    if args.summary:
        print(
            f"bundle {bundle.hash} for node {bundle.node or '(any)'}: {len(encode(bundle))} bytes"
        )
        for p in bundle.policies:
            key = f"{p.namespace}/{p.name}" if p.namespace else p.name
            print(f"  policy {p.kind} {key} generation {p.generation} mode {p.mode}")
        for part in ("process", "file"):
            tables = bundle.part(part)
            paths = tables.paths
            print(
                f"  {part}: {len(tables.selectors)} selectors, {len(tables.responses)} "
                f"responses, paths {len(paths.exact)} exact / {len(paths.children)} "
                f"children / {len(paths.recursive)} recursive"
            )
    else:
        print(json.dumps(bundle.to_json(), indent=2, sort_keys=True))
    return 0


def cmd_generate_crds(args: argparse.Namespace) -> int:
    for path in write_crds(args.directory):
        print(path)
    return 0


def cmd_generate_bundle_schema(args: argparse.Namespace) -> int:
    args.file.write_text(render_json_schema())
    print(args.file)
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from stockade.operator.election import StartupError, Timing
    from stockade.operator.kube import DEFAULT_WRITERS
    from stockade.operator.main import Config, main

    try:
        timing = Timing(args.lease_duration, args.renew_deadline, args.retry_period)
    except StartupError as exc:
        print(f"stockade operator: {exc}", file=sys.stderr)
        return 2
    if not (args.sensor_silent_after > 0 and math.isfinite(args.sensor_silent_after)):
        print(
            "stockade operator: --sensor-silent-after must be a number of seconds > 0,"
            f" not {args.sensor_silent_after:g}",
            file=sys.stderr,
        )
        return 2

    writers = DEFAULT_WRITERS if args.write_concurrency is None else args.write_concurrency
    if writers < 1:
        print(f"stockade operator: --write-concurrency must be >= 1, not {writers}",
              file=sys.stderr)  # fmt: skip
        return 2

    return main(
        Config(
            namespace=args.namespace,
            cluster=args.cluster,
            log_level=args.log_level,
            metrics_port=args.metrics_port,
            lease=None if args.standalone else args.lease,
            timing=timing,
            resync=args.resync,
            sensor_silent_after=args.sensor_silent_after,
            writers=writers,
        )
    )


def version_text() -> str:
    from importlib.metadata import version

    return f"stockade {version('stockade')}, CRDs {', '.join(sorted(all_crds()))}"


class _Version(argparse.Action):
    """--version as `stockade version` prints it (argparse's own would rewrap the line)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit()


def cmd_version(args: argparse.Namespace) -> int:
    print(version_text())
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="stockade", description=__doc__)
    top.add_argument("--version", action=_Version, help="print the version and exit")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check policy files (bare or Kubernetes YAML)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("explain", help="which selectors match an event and what is done")
    p.add_argument("--policy", required=True, type=Path, metavar="FILE")
    p.add_argument("--event", required=True, type=Path, metavar="EVENT.json")
    p.add_argument("--name", help="the policy to use when FILE holds several")
    p.set_defaults(run=cmd_explain)

    p = sub.add_parser(
        "convert", help="a Defend for Containers policy as a ClusterContainerPolicy manifest"
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the bare process:/file: policy")
    p.add_argument("--name", help="the object's name (default: from the file name)")
    p.add_argument("--namespace", help="write a ContainerPolicy in this namespace instead")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("compile", help="print the bundle the sensor of a node would get")
    p.add_argument("policies", nargs="+", type=Path, metavar="POLICY_FILE")
    p.add_argument(
        "--pods",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="Pods and Namespaces (YAML or JSON, lists allowed) scoping the bundle",
    )
    p.add_argument("--node", help="keep only pods bound to this node; names the bundle")
    p.add_argument("--summary", action="store_true", help="a short human summary")
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("generate-crds", help="write the CRDs generated from the models")
    p.add_argument("directory", type=Path, nargs="?", default=Path("crds"))
    p.set_defaults(run=cmd_generate_crds)

    p = sub.add_parser("generate-bundle-schema", help="write the bundle's JSON Schema")
    p.add_argument("file", type=Path, nargs="?", default=Path("docs/bundle.schema.json"))
    p.set_defaults(run=cmd_generate_bundle_schema)

    p = sub.add_parser("operator", help="run the operator (kubeconfig or in-cluster config)")
    p.add_argument("--namespace", default="stockade-system", help="where the bundles are written")
    p.add_argument("--cluster", default="", help="this cluster's name, for the sensors")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--metrics-port", type=int, default=9090, help="0 turns metrics off")
    p.add_argument(
        "--lease",
        default="stockade-operator",
        help="the Lease (in --namespace) that elects the replica that writes",
    )
    p.add_argument("--standalone", action="store_true", help="no leader election (one replica)")
    p.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS")
    p.add_argument(
        "--renew-deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="the leader exits when it can't renew for this long (< --lease-duration)",
    )
    p.add_argument("--retry-period", type=float, default=2.0, metavar="SECONDS")
    p.add_argument(
        "--resync", type=float, default=300.0, metavar="SECONDS", help="between full passes"
    )
    p.add_argument(
        "--sensor-silent-after",
        type=float,
        default=DEFAULT_SILENT_AFTER,
        metavar="SECONDS",
        help="a targeted node whose sensor's last heartbeat is older than this makes its"
        " policies Ready=False, reason SensorSilent (default %(default)g: sensors beat at least"
        " every 10 s, so several missed heartbeats, not one late write)",
    )
    p.add_argument(
        "--write-concurrency",
        type=int,
        metavar="N",
        help="apiserver calls in flight at most (bundle and status writes; default 16)",
    )
    p.set_defaults(run=cmd_operator)

    local_cli.register(sub)
    sensor_cli.register(sub)
    es_setup.register(sub)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(run=cmd_version)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (SourceError, UsageError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
