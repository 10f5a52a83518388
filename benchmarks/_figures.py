"""The contract every benchmark keeps, so that one runner (`python benchmarks`) can run them all.

A benchmark is a script `benchmarks/NAME.py` (a name without a leading underscore) that

* runs its full measurement with no arguments (what `make bench` runs; a few minutes at most);
* takes `--quick`: the same code paths, scaled down to a few seconds, only to show it still
  runs and produces its figures (`make bench-quick`, part of `make check`; its numbers mean
  nothing);
* takes `--json PATH`: writes its figures to PATH as a JSON list of objects
  `{"name", "value", "unit", "target", "spread", "command"}` and optionally `"note"`:
  `value` a number in `unit`; `target` `null` or `"<= N"` / `">= N"` in the same unit;
  `spread` `null` or a short text such as `"1.02-1.06 over 5 rounds"`; `command` the command
  line that reproduces the figure; `note` what a reader needs beside it (mode, load, counts);
* exits 0 once it measured: a missed target is a figure, not a failure;
* needs at most root, this machine's kernel and the services of `services/up`, whose exported
  variables (KUBECONFIG, ELASTICSEARCH_URL) the runner passes on.

Use `add_arguments`, `figure` and `report` below.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NotRequired, TypedDict

__all__ = ["Figure", "add_arguments", "command", "figure", "missed", "report", "without_json"]


class Figure(TypedDict):
    name: str
    value: float
    unit: str
    target: str | None
    spread: str | None
    command: str
    note: NotRequired[str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds: shows it runs, measures nothing"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")


def without_json(argv: Sequence[str]) -> list[str]:
    """Arguments without --json PATH."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json="):
            out.append(arg)
    return out


def command() -> str:
    """This process's command line as a reader would rerun it: without --json PATH."""
    script = Path(sys.argv[0]).resolve().relative_to(Path(__file__).resolve().parents[1])
    return shlex.join([".venv/bin/python", str(script), *without_json(sys.argv[1:])])


def _number(x: float) -> str:
    return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"


def figure(
    name: str,
    value: float | Sequence[float],
    unit: str,
    target: str | None = None,
    note: str | None = None,
) -> Figure:
    """One figure; `value` a number, or the rounds' values: their median, with min-max."""
    spread = None
    if not isinstance(value, int | float):
        rounds = list(value)
        value = statistics.median(rounds)
        if len(rounds) > 1:
            spread = f"{_number(min(rounds))}-{_number(max(rounds))} over {len(rounds)} rounds"
    if target is not None and not re.fullmatch(r"[<>]= -?[0-9.]+", target):
        raise ValueError(f"target {target!r}: want '<= N' or '>= N'")
    f = Figure(name=name, value=float(value), unit=unit, target=target, spread=spread,
               command=command())  # fmt: skip
    if note:
        f["note"] = note
    return f


def missed(f: Figure) -> bool:
    """Whether the figure misses its target (False without one)."""
    if f["target"] is None:
        return False
    op, bound = f["target"].split()
    return f["value"] > float(bound) if op == "<=" else f["value"] < float(bound)


def report(args: argparse.Namespace, figures: list[Figure]) -> None:
    """Print the figures, and write them to --json."""
    for f in figures:
        verdict = "" if f["target"] is None else f"  target {f['target']}"
        verdict += "  MISSED" if missed(f) else ""
        spread = f"  ({f['spread']})" if f["spread"] else ""
        note = f"  [{f['note']}]" if "note" in f else ""
        print(f"{f['name']}: {_number(f['value'])} {f['unit']}{spread}{verdict}{note}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n")
