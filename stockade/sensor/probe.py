"""Detect the enforcement mode by probing the kernel, never by configuration alone."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from stockade.sensor.abi import PROBE_STATE
from stockade.sensor.libbpf import BpfError, BpfObject
from stockade.sensor.paths import ensure_fs, object_path

__all__ = ["Mode", "ProbeResult", "bpf_lsm_active", "probe_mode"]

_LSM_LIST = Path("/sys/kernel/security/lsm")


class Mode(StrEnum):
    """How the node enforces `block`."""

    LSM = "lsm"  # BPF LSM: deny with EPERM before the operation
    FMODRET = "fmodret"  # fmod_ret on the security_* functions: deny with EPERM before it too
    KILL = "kill"  # tracepoints + bpf_send_signal: SIGKILL the process
    OBSERVE = "observe"  # events and alerts only


@dataclass(frozen=True)
class ProbeResult:
    """The detected mode and why."""

    mode: Mode
    reason: str
    lsm_listed: bool
    lsm_error: str | None
    fmodret_error: str | None
    kill_error: str | None


def bpf_lsm_active() -> bool:
    """Whether bpf is in the kernel's active LSM list (lsm=, else CONFIG_LSM)."""
    try:
        return "bpf" in _LSM_LIST.read_text().strip().split(",")
    except OSError:
        return False


_PROGRAMS = ("stk_probe_lsm", "stk_probe_fmodret", "stk_probe_kill")


def _load_only(obj: BpfObject, program: str) -> None:
    """Load the probe object with only `program` in it (each probe fails on its own)."""
    for other in _PROGRAMS:
        if other != program:
            obj.program(other).set_autoload(False)
    obj.load()


def _probe_lsm(obj_file: Path) -> str | None:
    """Load and attach a do-nothing BPF LSM program; None when it works."""
    try:
        with BpfObject(obj_file) as obj:
            _load_only(obj, "stk_probe_lsm")
            link = obj.program("stk_probe_lsm").attach_lsm()
            link.destroy()
    except BpfError as exc:
        return exc.strerror
    return None


def _probe_fmodret(obj_file: Path) -> str | None:
    """Attach an fmod_ret program to security_file_open that fails this thread's opens with
    EPERM, and open /dev/null; None when the open was refused by it."""
    try:
        with BpfObject(obj_file) as obj:
            _load_only(obj, "stk_probe_fmodret")
            bss = obj.map(".bss")
            link = obj.program("stk_probe_fmodret").attach()
            try:
                bss.update(bytes(4), PROBE_STATE.pack_fields(deny_tid=threading.get_native_id()))
                try:
                    os.close(os.open("/dev/null", os.O_RDONLY))
                    err = 0
                except OSError as exc:
                    err = exc.errno or 0
                raw = bss.lookup(bytes(4)) or bytes(PROBE_STATE.size)
                bss.update(bytes(4), bytes(PROBE_STATE.size))
            finally:
                link.destroy()
    except (BpfError, OSError) as exc:
        return str(exc).split("\n")[0]
    hits = PROBE_STATE.member(raw, "hits")
    if err == errno.EPERM and hits == 1:
        return None
    return f"open not refused (errno {err}, hits {hits})"


def _probe_kill(obj_file: Path, timeout: float = 5.0) -> str | None:
    """Attach a sched_process_exec tracepoint that SIGKILLs our next child; None if it died."""
    try:
        with BpfObject(obj_file) as obj:
            _load_only(obj, "stk_probe_kill")
            bss = obj.map(".bss")
            link = obj.program("stk_probe_kill").attach_tracepoint("sched", "sched_process_exec")
            try:
                bss.update(bytes(4), PROBE_STATE.pack_fields(target_ppid=os.getpid(), ret=1))
                child = subprocess.Popen(["/bin/sleep", "30"])
                try:
                    rc = child.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    rc = None
                raw = bss.lookup(bytes(4)) or bytes(PROBE_STATE.size)
            finally:
                link.destroy()
    except (BpfError, OSError) as exc:
        return str(exc).split("\n")[0]
    hits, ret = PROBE_STATE.member(raw, "hits"), PROBE_STATE.member(raw, "ret")
    if rc == -9 and hits >= 1 and ret == 0:
        return None
    return f"child not killed (exit {rc}, hits {hits}, bpf_send_signal {ret})"


def probe_mode(mount_fs: bool = True) -> ProbeResult:
    """Probe in order lsm, fmodret, kill, observe and return the first that works, with why
    each earlier one was refused."""
    if mount_fs:
        ensure_fs()
    obj_file = object_path("probe.bpf.o")
    listed = bpf_lsm_active()
    lsm_err: str | None = "bpf not in /sys/kernel/security/lsm"
    if listed:
        lsm_err = _probe_lsm(obj_file)
        if lsm_err is None:
            return ProbeResult(
                Mode.LSM, "BPF LSM program loaded and attached", True, None, None, None
            )
    fmodret_err = _probe_fmodret(obj_file)
    refused = f"BPF LSM unavailable ({lsm_err})"
    if fmodret_err is None:
        return ProbeResult(
            Mode.FMODRET,
            f"{refused}; an fmod_ret program on security_file_open refused an open with EPERM",
            listed, lsm_err, None, None,
        )  # fmt: skip
    refused += f"; fmod_ret unavailable ({fmodret_err})"
    kill_err = _probe_kill(obj_file)
    if kill_err is None:
        return ProbeResult(
            Mode.KILL,
            f"{refused}; tracepoint + bpf_send_signal(SIGKILL) killed a test child",
            listed, lsm_err, fmodret_err, None,
        )  # fmt: skip
    return ProbeResult(
        Mode.OBSERVE,
        f"{refused}; kill unavailable ({kill_err})",
        listed, lsm_err, fmodret_err, kill_err,
    )  # fmt: skip
