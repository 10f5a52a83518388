"""Reading the standalone sensor's inputs away from its record loop.

A policy file and a containers file are read, validated and compiled in a child process
(forked from the sensor) that limits its own address space and is killed when its time
budget is spent: an input that is huge, slow or crashes the parser (an alias bomb,
deep nesting, a 13 MB policy) costs the child, never the sensor, and whatever goes wrong is
one message naming the file and the reason. The child hands back the compiled bundle and
the containers it was compiled for as one document (`encode_applied`), written to a file:
the same bytes the sensor keeps in its state directory once it has applied them.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stockade.policy import bundle as bundle_codec
from stockade.policy.compiler import CompileError, compile_bundle
from stockade.policy.loader import SourceError, iter_policies
from stockade.sensor.containers import (
    ContainersError,
    dump_containers,
    load_containers,
    namespace_labels,
    restore_containers,
)
from stockade.sensor.ecs import Applied

__all__ = ["InputError", "Limits", "Reading", "decode_applied", "encode_applied", "read_inputs"]

HEADER = b"stockade-applied-bundle sha256:"
OUT_OF_MEMORY = "out of memory"
OUTPUT_KEPT = 8192  # bytes of the child's output kept (its messages are one line)


class InputError(Exception):
    """An input that is refused; the message names the file and says why."""


@dataclass(frozen=True)
class Limits:
    """What one reading of the inputs may cost: the child's address space and wall time.
    The largest valid policy (13 MB) needs ~200 MiB and a few seconds here."""

    memory_mib: int = 1024
    seconds: float = 60.0


def _one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def _refusing(path: Path) -> Iterator[None]:
    """Any failure while reading `path` as an InputError naming it; never a traceback."""
    out_of_memory = False
    try:
        yield
    except InputError:
        raise
    except (ContainersError, SourceError) as exc:
        raise InputError(_one_line(str(exc))) from None
    except CompileError as exc:
        raise InputError(f"{path}: can't compile: {_one_line(str(exc))}") from None
    except MemoryError:
        out_of_memory = True  # raised below, once what filled the memory is let go
    except RecursionError:
        raise InputError(f"{path}: can't be read: nested too deeply") from None
    except Exception as exc:  # the loader's own errors say it better; never a traceback
        reason = f"{type(exc).__name__}: {_one_line(str(exc))}"
        raise InputError(f"{path}: can't be read: {reason}") from None
    if out_of_memory:
        raise InputError(f"{path}: can't be read: {OUT_OF_MEMORY}")


def read_inputs(
    policy: Path, containers: Path, on_file: Callable[[Path], None] = lambda _: None
) -> Applied:
    """Compile the policy file for the containers of the containers file (generation 0: not
    applied yet). In this process: the sensor calls it only through `Reading`. `on_file` is
    told which file is read next."""
    on_file(containers)
    with _refusing(containers):
        listed = load_containers(containers)
    on_file(policy)
    with _refusing(policy):
        documents = list(iter_policies([policy]))
        if not documents:
            raise InputError(f"{policy}: no ContainerPolicy, ClusterContainerPolicy or policy")
        bundle = compile_bundle(documents, namespace_labels=namespace_labels(listed))
    return Applied(0, bundle, listed)


def encode_applied(applied: Applied) -> bytes:
    """The containers (one JSON line) and the bundle (`bundle.encode`) after a header line
    with the sha256 of the rest, so a torn or damaged file is caught before it is parsed."""
    containers = json.dumps(dump_containers(applied.containers), sort_keys=True).encode()
    payload = containers + b"\n" + bundle_codec.encode(applied.bundle)
    return HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def decode_applied(raw: bytes, source: Path) -> Applied:
    """What `encode_applied` wrote; InputError naming `source` if it is anything else."""
    header, _, payload = raw.partition(b"\n")
    if not header.startswith(HEADER):
        raise InputError(f"{source}: not an applied bundle (no {HEADER.decode()!r} header)")
    if header[len(HEADER) :] != hashlib.sha256(payload).hexdigest().encode():
        raise InputError(f"{source}: corrupt (its sha256 does not match its content)")
    containers, _, bundle = payload.partition(b"\n")
    try:
        return Applied(0, bundle_codec.decode(bundle), restore_containers(json.loads(containers)))
    except bundle_codec.BundleError as exc:
        raise InputError(f"{source}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise InputError(f"{source}: not an applied bundle ({type(exc).__name__})") from None


class Reading:
    """One reading of the inputs in a forked child process; `poll()` until it is done, then
    `error` is None and `result` holds `encode_applied`'s bytes, or `error` says why it was
    refused. Forked, not started afresh: the child has the compiler imported already, so a
    small policy takes milliseconds. Fork only from the main thread while no other thread
    works (the sensor's worker thread is idle while a reading runs)."""

    def __init__(self, policy: Path, containers: Path, result: Path, limits: Limits) -> None:
        self.policy = policy
        self.result = result
        self.limits = limits
        self.error: str | None = None
        self.started = time.monotonic()
        self._output = b""
        self._status: int | None = None
        read_end, write_end = os.pipe()
        self._pid = os.fork()
        if self._pid == 0:  # the child never returns into the sensor's code
            code = 2
            try:
                os.close(read_end)
                code = _child(write_end, limits, policy, containers, result)
            finally:
                os._exit(code)
        os.close(write_end)
        os.set_blocking(read_end, False)
        self._fd = read_end

    def _read(self) -> None:
        while self._fd >= 0:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                os.close(self._fd)
                self._fd = -1
                return
            self._output = (self._output + chunk)[-OUTPUT_KEPT:]

    def _lines(self) -> list[str]:
        return self._output.decode(errors="replace").splitlines()

    def _file(self) -> Path:
        """The file the child was reading last."""
        files = [line[8:] for line in self._lines() if line.startswith("reading ")]
        return Path(files[-1]) if files else self.policy

    def _reap(self, flags: int) -> bool:
        if self._status is None:
            pid, status = os.waitpid(self._pid, flags)
            if pid:
                self._status = status
        return self._status is not None

    def poll(self) -> bool:
        """True once the child has finished or been killed at the end of its time budget."""
        self._read()
        if not self._reap(os.WNOHANG):
            if time.monotonic() - self.started < self.limits.seconds:
                return False
            self.cancel()
            self.error = f"{self._file()}: not read and compiled within {self.limits.seconds:g} s"
            return True
        self._read()
        assert self._status is not None
        code = os.waitstatus_to_exitcode(self._status)
        refused = [line for line in self._lines() if line.startswith("refused ")]
        if code == 1 and refused:
            self.error = refused[-1].removeprefix("refused ")
            if self.error.endswith(OUT_OF_MEMORY):
                self.error += f" (the reader may use {self.limits.memory_mib} MiB)"
        elif code < 0:
            self.error = f"{self._file()}: the reader died of {signal.Signals(-code).name}"
        elif code != 0:
            self.error = f"{self._file()}: the reader failed (exit {code})"
        return True

    def cancel(self) -> None:
        """Kill the child (a reading that is no longer wanted) and forget it."""
        if not self._reap(os.WNOHANG):
            os.kill(self._pid, signal.SIGKILL)
            self._reap(0)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _child(out: int, limits: Limits, policy: Path, containers: Path, result: Path) -> int:
    """In the child: limit this process, read, write the result; `refused MESSAGE` on `out`."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # die with the sensor, which is the one that enforces the time budget
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    # the address space the sensor has already (shared until written) plus the budget
    with open("/proc/self/statm", "rb") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    memory = size + (limits.memory_mib << 20)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    def say(line: str) -> None:
        os.write(out, (line[: OUTPUT_KEPT // 2] + "\n").encode(errors="replace"))

    try:
        applied = read_inputs(policy, containers, lambda f: say(f"reading {f}"))
        with _refusing(policy):
            raw = encode_applied(applied)
        with open(result, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
    except InputError as exc:
        say(f"refused {exc}")
        return 1
    except OSError as exc:
        say(f"refused {result}: can't write: {exc.strerror}")
        return 1
    return 0
