"""`stockade convert` output, for every policy of the corpus, is accepted by the apiserver."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Kubectl

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "d4c" / "valid"


def convert(path: Path, *args: str) -> str:
    command = [sys.executable, "-m", "stockade.cli", "convert", str(path), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_conversion_passes_a_server_dry_run(
    crds: None, kubectl: Kubectl, namespace: str, path: Path
) -> None:
    for manifest in (convert(path), convert(path, "--namespace", namespace)):
        result = kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
        assert result.returncode == 0, result.stderr
        assert "(server dry run)" in result.stdout
