"""sessionLeaderInteractive: a process on a pseudo-terminal (an operator's `kubectl exec -it`
shell) matches `sessionLeaderInteractive: true`; the same program without one doesn't."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Pod, Stack, Story, run
from .manifests import container_policy, exec_of

pytestmark = pytest.mark.kernel

# runs argv on a new pseudo-terminal as its session leader (pty.spawn: setsid + the
# terminal made controlling) and exits with its status (128 + signal when killed)
ON_A_TERMINAL = (
    "import os, pty, sys\n"
    "code = os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:]))\n"
    "sys.exit(128 - code if code < 0 else code)\n"
)


def on_a_terminal(pod: Pod, argv: list[str]) -> int:
    proc = pod.run("app", [sys.executable, "-c", ON_A_TERMINAL, *argv],
                   start_new_session=True, stdin=subprocess.DEVNULL)  # fmt: skip
    return proc.returncode


def test_only_a_process_on_a_terminal_matches_session_leader_interactive(
    stack: Stack, namespaces: Callable[..., str], story: Story, tool: Path
) -> None:
    ns = namespaces("tty")
    web = stack.start_pod(ns, "web-1", {"app": "web"})
    story(f"pod {ns}/web-1; block the exec of {tool.name} in interactive sessions only")
    stack.apply(container_policy("no-tool-on-a-tty", ns, {"app": "web"},
                                 **exec_of(tool, sessionLeaderInteractive=True)))  # fmt: skip
    story.wait("READY True, NODES 1/1", lambda: (r := stack.row(ns, "no-tool-on-a-tty"))
               ["READY"] == "True" and r["NODES"] == "1/1")  # fmt: skip
    killed = 128 + 9
    code = on_a_terminal(web, [str(tool)])
    story(f"{tool.name} on a pseudo-terminal: exit {code}")
    assert code == killed if stack.mode() == "kill" else code != 0
    code = run(web, [str(tool)])
    story(f"{tool.name} without a terminal: exit {code}")
    assert code == 0
    alerts = story.wait("the terminal one's alert", lambda: stack.alerts(
        ns, process__executable=str(tool)))  # fmt: skip
    process, selectors = alerts[0]["process"], alerts[0]["cloud_defend"]["matched_selectors"]
    story(f"  alert: interactive {process['interactive']}, tty {process.get('tty')}, "
          f"selectors {selectors}")  # fmt: skip
    assert [a["process"]["interactive"] for a in alerts] == [True]
    assert "tool" in alerts[0]["cloud_defend"]["matched_selectors"]
