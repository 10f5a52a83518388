"""Detect the enforcement mode by probing the kernel, never by configuration alone."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from stockade.sensor.abi import PROBE_STATE
from stockade.sensor.libbpf import BpfError, BpfObject
from stockade.sensor.paths import ensure_fs, object_path

__all__ = ["Mode", "ProbeResult", "probe_mode"]

_LSM_LIST = Path("/sys/kernel/security/lsm")


class Mode(StrEnum):
    """How the node enforces `block`."""

    LSM = "lsm"  # BPF LSM: deny with EPERM before the operation
    KILL = "kill"  # tracepoints + bpf_send_signal: SIGKILL the process
    OBSERVE = "observe"  # events and alerts only


@dataclass(frozen=True)
class ProbeResult:
    """The detected mode and why."""

    mode: Mode
    reason: str
    lsm_listed: bool
    lsm_error: str | None
    kill_error: str | None


def _lsm_listed() -> bool:
    try:
        return "bpf" in _LSM_LIST.read_text().strip().split(",")
    except OSError:
        return False


def _probe_lsm(obj_file: Path) -> str | None:
    """Load and attach a do-nothing BPF LSM program; None when it works."""
    try:
        with BpfObject(obj_file) as obj:
            obj.program("stk_probe_kill").set_autoload(False)
            obj.load()
            link = obj.program("stk_probe_lsm").attach_lsm()
            link.destroy()
    except BpfError as exc:
        return exc.strerror
    return None


def _probe_kill(obj_file: Path, timeout: float = 5.0) -> str | None:
    """Attach a sched_process_exec tracepoint that SIGKILLs our next child; None if it died."""
    try:
        with BpfObject(obj_file) as obj:
            obj.program("stk_probe_lsm").set_autoload(False)
            obj.load()
            bss = obj.map(".bss")
            link = obj.program("stk_probe_kill").attach_tracepoint("sched", "sched_process_exec")
            try:
                bss.update(bytes(4), PROBE_STATE.pack(os.getpid(), 0, 1))
                child = subprocess.Popen(["/bin/sleep", "30"])
                try:
                    rc = child.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    rc = None
                raw = bss.lookup(b"\0" * 4) or b""
            finally:
                link.destroy()
    except (BpfError, OSError) as exc:
        return str(exc).split("\n")[0]
    _, hits, ret = PROBE_STATE.unpack_from(raw)
    if rc == -9 and hits >= 1 and ret == 0:
        return None
    return f"child not killed (exit {rc}, hits {hits}, bpf_send_signal {ret})"


def probe_mode(mount_fs: bool = True) -> ProbeResult:
    """Probe in order lsm, kill, observe and return the first that works."""
    if mount_fs:
        ensure_fs()
    obj_file = object_path("probe.bpf.o")
    listed = _lsm_listed()
    lsm_err: str | None = "bpf not in /sys/kernel/security/lsm"
    if listed:
        lsm_err = _probe_lsm(obj_file)
        if lsm_err is None:
            return ProbeResult(Mode.LSM, "BPF LSM program loaded and attached", True, None, None)
    kill_err = _probe_kill(obj_file)
    if kill_err is None:
        return ProbeResult(
            Mode.KILL,
            f"BPF LSM unavailable ({lsm_err}); tracepoint + bpf_send_signal(SIGKILL) killed a"
            " test child",
            listed,
            lsm_err,
            None,
        )
    return ProbeResult(
        Mode.OBSERVE,
        f"BPF LSM unavailable ({lsm_err}); kill unavailable ({kill_err})",
        listed,
        lsm_err,
        kill_err,
    )
