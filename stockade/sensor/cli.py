"""`stockade sensor`: the node sensor's command (standalone mode for now).

Registered into the `stockade` command by `register(subparsers)`; also runnable as
`python -m stockade.sensor.cli`. Nothing here loads libbpf until the command runs, so
the rest of the CLI works on machines without it.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from stockade.sensor import output
from stockade.sensor.state import DEFAULT_STATE_DIR

if TYPE_CHECKING:
    from stockade.sensor.output import Output
    from stockade.sensor.state import StateDir


def _fail(message: str, code: int = 2) -> int:
    print(f"stockade sensor: {message}", file=sys.stderr)
    return code


def _seconds(value: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{value!r}: want a positive number of seconds")
    return seconds


def cmd_sensor(args: argparse.Namespace) -> int:
    if args.standalone and (args.policy is None or args.containers is None):
        return _fail("--standalone needs --policy and --containers")
    if not args.standalone:
        if args.policy is not None or args.containers is not None:
            return _fail("--policy and --containers are for --standalone")
        args.node_name = args.node_name or os.environ.get("NODE_NAME", "")
        if not args.node_name:
            return _fail("--node-name (or NODE_NAME) is required without --standalone")
    import logging

    from stockade.sensor.elastic.config import ConfigError
    from stockade.sensor.logs import configure_logging
    from stockade.sensor.output import open_output
    from stockade.sensor.probe import Mode, probe_mode
    from stockade.sensor.state import StateDir

    # before the output opens: what it says (its spool, Elasticsearch) goes through the log
    configure_logging(args.log_level, json_lines=not args.standalone)
    log = logging.getLogger("stockade.sensor")
    try:
        state = StateDir(args.state_dir)
    except OSError as exc:
        log.error(f"{args.state_dir}: can't use as the state directory: {exc.strerror}")
        return 1
    try:
        out = open_output(args)
    except (ConfigError, OSError) as exc:
        log.error(f"--output: {exc}")
        return 2
    probed = state.probed()  # restarted in this boot: the kernel can do what it could
    if probed is None:
        probe = probe_mode()
        mode, reason = str(probe.mode), probe.reason
        if probe.mode != Mode.OBSERVE:  # a failed probe may have been bad luck: probe again
            state.remember_probe(mode, reason)
    else:
        mode, reason = probed[0], f"{probed[1]}; probed earlier in this boot"
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run = _standalone if args.standalone else _node
    try:
        return run(args, state, out, mode, reason, lambda: bool(stopping))
    finally:
        out.close()


def _standalone(
    args: argparse.Namespace, state: StateDir, out: Output, mode: str, reason: str,
    stop: Callable[[], bool],
) -> int:  # fmt: skip
    from stockade.sensor.inputs import Limits
    from stockade.sensor.kernel import open_sensor
    from stockade.sensor.libbpf import BpfError
    from stockade.sensor.standalone import Standalone

    # lsm: stockade_lsm.bpf.o; fmodret: stockade_fmodret.bpf.o; kill and observe: stockade.bpf.o
    print(f"stockade sensor: mode {mode} ({reason})", file=sys.stderr, flush=True)
    limits = Limits(memory_mib=args.read_memory, seconds=args.read_timeout)
    try:
        with open_sensor(mode) as sensor:
            sa = Standalone(
                sensor, args.policy, args.containers, out, mode, state=state, limits=limits
            )
            try:
                # the cached bundle is in the maps before the programs attach: enforced from
                # their first event; the inputs are read while they run
                cached = sa.apply_cached()
                sensor.attach()
                if cached:
                    sa.start_reading()
                elif not sa.apply():
                    return 1
                sa.run(stop, stats_s=args.stats_interval)
                out.close()  # delivered or spooled before the last stats line
                sa.report()
            finally:
                sa.close()
    except BpfError as exc:
        print(f"stockade sensor: can't load the BPF programs: {exc}", file=sys.stderr)
        state.forget_probe()
        return 1
    return 0


def _node(
    args: argparse.Namespace, state: StateDir, out: Output, mode: str, reason: str,
    stop: Callable[[], bool],
) -> int:  # fmt: skip
    import logging
    from importlib.metadata import version

    from kubernetes.config import ConfigException

    from stockade.kube import api_client
    from stockade.sensor.cgroups import v2_root
    from stockade.sensor.kernel import open_sensor
    from stockade.sensor.libbpf import BpfError
    from stockade.sensor.node import NodeOptions, NodeSensor
    from stockade.sensor.serve import serve

    log = logging.getLogger("stockade.sensor")
    log.info(f"mode {mode} ({reason})", extra={"mode": mode, "node": args.node_name})
    root = args.cgroup_root or v2_root()
    if root is None:
        log.error("no cgroup v2 filesystem is mounted: containers can't be told apart")
        return 1
    try:
        api = api_client(4)
    except (ConfigException, OSError) as exc:
        log.error(f"no apiserver to talk to: {exc}")
        return 2
    options = NodeOptions(
        node=args.node_name,
        namespace=args.namespace,
        cluster_name=args.cluster_name or os.environ.get("CLUSTER_NAME") or None,
        cgroup_root=root,
        version=version("stockade"),
        mode_reason=reason,
        heartbeat_s=args.heartbeat,
    )
    try:
        with open_sensor(mode) as sensor:
            node = NodeSensor(sensor, api, out, mode, options, state=state)
            try:
                # the cached bundle is in the maps before the programs attach, so enforcement
                # has no gap across a restart, and doesn't wait for the apiserver
                node.start_offline()
                sensor.attach()
                try:
                    server = serve(node, args.metrics_port) if args.metrics_port else None
                except OSError as exc:
                    log.error(f"can't serve --metrics-port {args.metrics_port}: {exc.strerror}")
                    return 1
                node.start()
                node.run(stop)
                if server is not None:
                    server.shutdown()
            finally:
                node.close()
    except BpfError as exc:
        log.error(f"can't load the BPF programs: {exc}")
        state.forget_probe()
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add `sensor` to the `stockade` command's subparsers."""
    p = subparsers.add_parser("sensor", help="enforce policies in the kernel (eBPF)")
    p.add_argument(
        "--standalone",
        action="store_true",
        help="policy and containers from files instead of the cluster",
    )
    p.add_argument("--policy", type=Path, metavar="FILE", help="--standalone: the policies")
    p.add_argument(
        "--containers",
        type=Path,
        metavar="FILE.json",
        help="--standalone: cgroup v2 directory → {container, kubernetes} facts",
    )
    k = p.add_argument_group("Kubernetes (without --standalone)")
    k.add_argument(
        "--node-name", default="", metavar="NODE",
        help="this node (default: $NODE_NAME, as the downward API sets it)",
    )  # fmt: skip
    k.add_argument(
        "--namespace", default="stockade-system",
        help="where the operator writes the node's bundle ConfigMap (default stockade-system)",
    )  # fmt: skip
    k.add_argument(
        "--cluster-name", default="", metavar="NAME",
        help="for kubernetesClusterName conditions (default: $CLUSTER_NAME, else the "
        "operator's --cluster)",
    )  # fmt: skip
    k.add_argument(
        "--cgroup-root", type=Path, default=None, metavar="DIR",
        help="the cgroup v2 mount (default: found in /proc/self/mountinfo)",
    )  # fmt: skip
    k.add_argument(
        "--metrics-port", type=int, default=9464, metavar="PORT",
        help="/healthz, /readyz and /metrics (0: none; default 9464)",
    )  # fmt: skip
    k.add_argument(
        "--heartbeat", type=_seconds, default=10.0, metavar="SECONDS",
        help="the NodePolicyReport is written at least this often (default 10)",
    )  # fmt: skip
    k.add_argument("--log-level", default="info", help="debug, info, warning or error")
    output.add_arguments(p)
    p.add_argument(
        "--stats-interval", type=float, default=60.0, metavar="SECONDS",
        help="how often a stats line (records, drops) goes to stderr; also on exit",
    )  # fmt: skip
    p.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help="where the last applied bundle is kept; a restarted sensor enforces it before "
        f"it reads anything (default {DEFAULT_STATE_DIR})",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a policy and containers file not read and compiled in this time is refused",
    )
    p.add_argument(
        "--read-memory", type=int, default=1024, metavar="MiB",
        help="the address space the reading of the inputs may use before they are refused",
    )  # fmt: skip
    p.set_defaults(run=cmd_sensor)


def main(argv: Sequence[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="stockade")
    register(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(["sensor", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
