"""`stockade up`, `stockade down`, `stockade demo`: the local stack from the command line.

Registered into the `stockade` command by `register(subparsers)`. A piece that fails, or a
file that can't be written, is one line naming it (exit 1); Ctrl-C is one line too (exit
130), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from stockade.local import StackError


def _say(line: str) -> None:
    """A progress line; a reader gone (`stockade down | head -1`) doesn't stop the work."""
    try:
        print(line, flush=True)
    except BrokenPipeError:  # the rest to /dev/null, as Python's docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _guarded(run: Callable[[argparse.Namespace], int], interrupted: str) -> Any:
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (StackError, OSError) as exc:  # OSError: a full disk, an unwritable directory
            print(f"stockade {args.command}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\nstockade {args.command}: interrupted; {interrupted}", file=sys.stderr)
            return 130

    return guarded


def cmd_up(args: argparse.Namespace) -> int:
    from stockade.local.stack import Stack

    stack = Stack.from_env()
    stack.up(_say)
    me = sys.argv[0] if sys.argv[0].endswith("stockade") else "stockade"
    bin_dir = stack.env().get("STOCKADE_BIN", "/var/cache/stockade/bin")
    print(
        f"""
Stockade runs on node {stack.node}: the operator, the sensor ({stack.sensor_mode()} mode),
the default policy (every exec logged; drift and interactive shells alerted).
Try:
  . {stack.state}/env; export PATH={bin_dir}:$PATH   # KUBECONFIG, ELASTICSEARCH_URL, kubectl
  kubectl get clustercontainerpolicies,containerpolicies -A
  kubectl get nodepolicyreport {stack.node} -o yaml
  curl -s "$ELASTICSEARCH_URL/logs-cloud_defend.alerts-*/_search?size=3&sort=@timestamp:desc\
&filter_path=hits.hits._source&pretty\
&_source=@timestamp,event.action,process.executable,file.path,cloud_defend.outcome"
  {me} demo    # a container, a drift alert, a policy that blocks, the counts
  {me} down    # stop and remove all of it"""
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from stockade.local.stack import Stack

    Stack.from_env().down(_say)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stockade.local.demo import run_demo
    from stockade.local.stack import Stack

    t0 = time.monotonic()
    run_demo(Stack.from_env(), _say)
    print(f"(demo: {time.monotonic() - t0:.0f} s)")
    return 0


def register(subparsers: Any) -> None:
    """Add `up`, `down` and `demo` to the `stockade` command's subparsers."""
    p = subparsers.add_parser(
        "up",
        help="start the whole loop on this machine: apiserver, Elasticsearch, operator, sensor",
        description="Starts what isn't running of the local stack (ports and state directory"
        " from the STOCKADE_* environment, as services/up reads them) and the default policy.",
    )
    resume = "what started keeps running: `stockade up` finishes, `stockade down` stops it"
    p.set_defaults(run=_guarded(cmd_up, resume))
    p = subparsers.add_parser("down", help="stop and remove what `stockade up` started")
    p.set_defaults(run=_guarded(cmd_down, "run `stockade down` again to finish"))
    p = subparsers.add_parser(
        "demo", help="a demo container, a drift alert, a blocked exec (after `stockade up`)"
    )
    p.set_defaults(run=_guarded(cmd_demo, "`stockade down` removes the demo container"))
