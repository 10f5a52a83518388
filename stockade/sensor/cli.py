"""`stockade sensor`: the node sensor's command (standalone mode for now).

Registered into the `stockade` command by `register(subparsers)`; also runnable as
`python -m stockade.sensor.cli`. Nothing here loads libbpf until the command runs, so
the rest of the CLI works on machines without it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from stockade.sensor import output
from stockade.sensor.state import DEFAULT_STATE_DIR


def cmd_sensor(args: argparse.Namespace) -> int:
    if not args.standalone:
        print(
            "stockade sensor: only --standalone is available (the Kubernetes mode comes with "
            "the operator)",
            file=sys.stderr,
        )
        return 2
    from stockade.sensor.elastic.config import ConfigError
    from stockade.sensor.inputs import Limits
    from stockade.sensor.kernel import open_sensor
    from stockade.sensor.libbpf import BpfError
    from stockade.sensor.output import open_output
    from stockade.sensor.probe import Mode, probe_mode
    from stockade.sensor.standalone import Standalone
    from stockade.sensor.state import StateDir

    try:
        state = StateDir(args.state_dir)
    except OSError as exc:
        print(f"stockade sensor: {args.state_dir}: can't use as the state directory: "
              f"{exc.strerror}", file=sys.stderr)  # fmt: skip
        return 1
    try:
        out = open_output(args)
    except (ConfigError, OSError) as exc:
        print(f"stockade sensor: --output: {exc}", file=sys.stderr)
        return 2
    probed = state.probed()  # restarted in this boot: the kernel can do what it could
    if probed is None:
        probe = probe_mode()
        mode, reason = str(probe.mode), probe.reason
        if probe.mode != Mode.OBSERVE:  # a failed probe may have been bad luck: probe again
            state.remember_probe(mode, reason)
    else:
        mode, reason = probed[0], f"{probed[1]}; probed earlier in this boot"
    # lsm: stockade_lsm.bpf.o; kill and observe: stockade.bpf.o
    print(f"stockade sensor: mode {mode} ({reason})", file=sys.stderr, flush=True)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
                sa.run(lambda: bool(stopping), stats_s=args.stats_interval)
                out.close()  # delivered or spooled before the last stats line
                sa.report()
            finally:
                sa.close()
    except BpfError as exc:
        print(f"stockade sensor: can't load the BPF programs: {exc}", file=sys.stderr)
        state.forget_probe()
        return 1
    finally:
        out.close()
    return 0


def register(subparsers: Any) -> None:
    """Add `sensor` to the `stockade` command's subparsers."""
    p = subparsers.add_parser("sensor", help="enforce policies in the kernel (eBPF)")
    p.add_argument(
        "--standalone",
        action="store_true",
        help="policy and containers from files instead of the cluster",
    )
    p.add_argument("--policy", required=True, type=Path, metavar="FILE")
    p.add_argument(
        "--containers",
        required=True,
        type=Path,
        metavar="FILE.json",
        help="cgroup v2 directory → {container, kubernetes} facts",
    )
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
