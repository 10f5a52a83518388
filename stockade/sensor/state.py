"""The sensor's state directory (`--state-dir`): what it last applied, kept across restarts.

`applied.json` is the last applied bundle and the containers it was applied with
(`inputs.encode_applied`); a restarted sensor enforces it before it reads anything else.
`mode.json` is the enforcement mode the probe found in this boot (with the boot id): the
kernel's abilities don't change until it reboots, so a restart doesn't probe again.
A reading of new inputs writes `applied.json.new` (and fsyncs it); once the maps have taken
it, `commit()` renames it over `applied.json` and fsyncs the directory, so the file is
always one whole applied document, never a half-written or a refused one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from stockade.sensor.inputs import InputError

__all__ = ["DEFAULT_STATE_DIR", "StateDir"]

DEFAULT_STATE_DIR = Path("/var/lib/stockade/sensor")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class StateDir:
    """One sensor's state directory (created 0700 when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.applied = path / "applied.json"
        self.pending = path / "applied.json.new"
        self.mode = path / "mode.json"

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

    def probed(self) -> tuple[str, str] | None:
        """(mode, reason) as probed earlier in this boot; None when not, or unreadable."""
        try:
            data = json.loads(self.mode.read_text())
            if data["boot"] == BOOT_ID.read_text().strip():
                return str(data["mode"]), str(data["reason"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def remember_probe(self, mode: str, reason: str) -> None:
        """Keep the probe's result for restarts in this boot (whole or not at all)."""
        new = self.mode.with_suffix(".new")
        try:
            boot = BOOT_ID.read_text().strip()
            new.write_text(json.dumps({"boot": boot, "mode": mode, "reason": reason}))
            os.replace(new, self.mode)
        except OSError:
            pass  # then the next start probes again

    def forget_probe(self) -> None:
        """The remembered mode didn't work out: the next start probes again."""
        self.mode.unlink(missing_ok=True)
