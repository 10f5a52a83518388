"""The sensor's state directory: the probed mode is kept for one boot only."""

from __future__ import annotations

import json
from pathlib import Path

from stockade.sensor.state import StateDir


def test_the_probed_mode_is_kept_for_this_boot_only(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    assert state.probed() is None
    state.remember_probe("kill", "why")
    assert state.probed() == ("kill", "why")
    again = StateDir(tmp_path / "state")
    assert again.probed() == ("kill", "why")
    data = json.loads(state.mode.read_text())
    state.mode.write_text(json.dumps({**data, "boot": "another boot"}))
    assert state.probed() is None
    state.mode.write_text("{")
    assert state.probed() is None
    state.forget_probe()
    assert not state.mode.exists()
