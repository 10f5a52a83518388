"""docs/benchmarks.md is generated: it must be what the runner renders from the figures."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_benchmarks_page_is_rendered_from_the_recorded_figures() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
