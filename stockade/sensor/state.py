"""The sensor's state directory (`--state-dir`): what it last applied, kept across restarts.

`applied.json` is the last applied bundle and the containers it was applied with
(`inputs.encode_applied`); a restarted sensor enforces it before it reads anything else.
A reading of new inputs writes `applied.json.new` (and fsyncs it); once the maps have taken
it, `commit()` renames it over `applied.json` and fsyncs the directory, so the file is
always one whole applied document, never a half-written or a refused one.
"""

from __future__ import annotations

import os
from pathlib import Path

from stockade.sensor.inputs import InputError

__all__ = ["DEFAULT_STATE_DIR", "StateDir"]

DEFAULT_STATE_DIR = Path("/var/lib/stockade/sensor")


class StateDir:
    """One sensor's state directory (created 0700 when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.applied = path / "applied.json"
        self.pending = path / "applied.json.new"

    def cached(self) -> bytes | None:
        """The last applied document, None when there is none."""
        try:
            return self.applied.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(f"{self.applied}: can't read: {exc.strerror}") from None

    def commit(self) -> None:
        """The pending document is now the applied one."""
        os.replace(self.pending, self.applied)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
