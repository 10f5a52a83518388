"""The sensor's state directory (`--state-dir`): what it last applied, kept across restarts.

`applied.json` is the last applied bundle and the containers it was applied with
(`inputs.encode_applied`); a restarted sensor enforces it before it reads anything else.
`mode.json` is the enforcement mode the probe found in this boot (with the boot id): the
kernel's abilities don't change until it reboots, so a restart doesn't probe again.
A reading of new inputs hands its result over in memory (`/dev/shm`, so a full state disk
can't stop a policy from being applied); once the maps have taken it, `commit()` writes it
to `applied.json.tmp`, fsyncs and renames it over `applied.json`, so the file is always one
whole applied document, never a half-written or a refused one. The cache is a head start
for restarts, never a condition of enforcing: a commit the disk refuses is reported and
the bundle is enforced all the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress
from pathlib import Path

from stockade.sensor.inputs import InputError

__all__ = ["DEFAULT_STATE_DIR", "StateDir"]

DEFAULT_STATE_DIR = Path("/var/lib/stockade/sensor")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
HANDOFF_DIR = Path("/dev/shm")


def _handoff(state: Path) -> Path:
    """Where the reading child hands its result over: in memory when there is /dev/shm (one
    name per state directory, so a crashed sensor's is reused), else the state directory."""
    if HANDOFF_DIR.is_dir() and os.access(HANDOFF_DIR, os.W_OK):
        key = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:16]
        return HANDOFF_DIR / f"stockade-sensor-{key}.applied.new"
    return state / "applied.json.new"


class StateDir:
    """One sensor's state directory (created 0700 when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.applied = path / "applied.json"
        self.pending = _handoff(path)
        self.mode = path / "mode.json"
        self.unreported = path / "unreported.json"

    def cached(self) -> bytes | None:
        """The last applied document, None when there is none."""
        try:
            return self.applied.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(f"{self.applied}: can't read: {exc.strerror}") from None

    def commit(self, raw: bytes) -> str | None:
        """Keep `raw` (the pending document, now applied) for restarts; why not, when the
        disk refuses (the cache then still holds the previous one)."""
        tmp = self.path / "applied.json.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.applied)
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink()
            return f"{self.applied}: can't write: {exc.strerror}"
        finally:
            with suppress(OSError):
                self.pending.unlink()
        return None

    def keep_unreported(self, counts: list[list[object]]) -> None:
        """Counts a stopping sensor couldn't report, for the next one to carry on."""
        new = self.unreported.with_suffix(".new")
        try:
            new.write_text(json.dumps(counts))
            os.replace(new, self.unreported)
        except OSError:
            pass  # then they are lost, as a crash loses them

    def read_unreported(self) -> list[list[object]]:
        """What `keep_unreported` kept ([] when nothing or unreadable); it stays until
        `forget_unreported`, so a sensor that dies before reporting it doesn't lose it."""
        try:
            data = json.loads(self.unreported.read_text())
        except (OSError, ValueError):
            data = []
        return data if isinstance(data, list) else []

    def forget_unreported(self) -> None:
        """The counts carried on are reported: the next sensor mustn't carry them again."""
        with suppress(OSError):
            self.unreported.unlink(missing_ok=True)

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
