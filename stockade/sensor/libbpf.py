"""Thin, typed ctypes binding over libbpf.so.1 (objects, programs, maps, ring buffers)."""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno as errno_mod
import os
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "BpfError",
    "BpfObject",
    "Btf",
    "Link",
    "Map",
    "Program",
    "RingBuffer",
    "libbpf_log",
    "num_possible_cpus",
    "obj_get",
]

BPF_ANY: Final = 0
BPF_NOEXIST: Final = 1
BPF_EXIST: Final = 2

_PERCPU_MAP_TYPES: Final = frozenset({5, 6, 10})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_vp = ctypes.c_void_p
_cp = ctypes.c_char_p
_int = ctypes.c_int
_u32 = ctypes.c_uint32


def _sig(name: str, restype: type | None, *argtypes: type) -> None:
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_sig("bpf_object__open_file", _vp, _cp, _vp)
_sig("bpf_object__load", _int, _vp)
_sig("bpf_object__close", None, _vp)
_sig("bpf_object__find_program_by_name", _vp, _vp, _cp)
_sig("bpf_object__find_map_by_name", _vp, _vp, _cp)
_sig("bpf_program__set_autoload", _int, _vp, ctypes.c_bool)
_sig("bpf_program__set_attach_target", _int, _vp, _int, ctypes.c_char_p)
_sig("bpf_program__fd", _int, _vp)
_sig("bpf_program__name", _cp, _vp)
_sig("bpf_program__attach", _vp, _vp)
_sig("bpf_program__attach_tracepoint", _vp, _vp, _cp, _cp)


class _TracepointOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("bpf_cookie", ctypes.c_uint64)]  # bpf_tracepoint_opts


_sig("bpf_program__attach_tracepoint_opts", _vp, _vp, _cp, _cp, ctypes.POINTER(_TracepointOpts))
_sig("bpf_program__attach_lsm", _vp, _vp)
_sig("bpf_link__destroy", _int, _vp)
_sig("bpf_link__pin", _int, _vp, _cp)
_sig("bpf_map__fd", _int, _vp)
_sig("bpf_map__name", _cp, _vp)
_sig("bpf_map__type", _int, _vp)
_sig("bpf_map__key_size", _u32, _vp)
_sig("bpf_map__value_size", _u32, _vp)
_sig("bpf_map__max_entries", _u32, _vp)
_sig("bpf_map__pin", _int, _vp, _cp)
_sig("bpf_map__unpin", _int, _vp, _cp)
_sig("bpf_map_lookup_elem", _int, _int, _vp, _vp)
_sig("bpf_map_update_elem", _int, _int, _vp, _vp, ctypes.c_uint64)
_sig("bpf_map_delete_elem", _int, _int, _vp)
_sig("bpf_map_get_next_key", _int, _int, _vp, _vp)
_sig("bpf_map_update_batch", _int, _int, _vp, _vp, ctypes.POINTER(_u32), _vp)
_sig("bpf_obj_get", _int, _cp)
_sig("libbpf_num_possible_cpus", _int)
_sig("btf__parse", _vp, _cp, _vp)
_sig("btf__free", None, _vp)
_sig("btf__find_by_name_kind", ctypes.c_int32, _vp, _cp, _u32)
_sig("btf__type_by_id", _vp, _vp, _u32)
_sig("btf__name_by_offset", _cp, _vp, _u32)
_SAMPLE_CB = ctypes.CFUNCTYPE(_int, _vp, _vp, ctypes.c_size_t)
_sig("ring_buffer__new", _vp, _int, _SAMPLE_CB, _vp, _vp)
_sig("ring_buffer__add", _int, _vp, _int, _SAMPLE_CB, _vp)
_sig("ring_buffer__poll", _int, _vp, _int)
_sig("ring_buffer__consume", _int, _vp)
_sig("ring_buffer__free", None, _vp)
_sig("ring_buffer__epoll_fd", _int, _vp)
_PRINT_CB = ctypes.CFUNCTYPE(_int, _int, _cp, _vp)
_sig("libbpf_set_print", _vp, _PRINT_CB)
_libc.vsnprintf.restype = _int
_libc.vsnprintf.argtypes = [_cp, ctypes.c_size_t, _cp, _vp]

# libbpf's log (verifier output included), newest last.
_LOG: collections.deque[str] = collections.deque(maxlen=4000)
# one print's text: a refused program's whole verifier log comes in one print (the reason is
# its last line), so this is as large as the log it keeps
_PRINT_BUF = ctypes.create_string_buffer(1 << 20)
_PRINT_LOCK = threading.Lock()


def _on_print(level: int, fmt: bytes | None, args: int | None) -> int:
    with _PRINT_LOCK:
        _libc.vsnprintf(_PRINT_BUF, len(_PRINT_BUF), fmt, args)
        _LOG.extend(_PRINT_BUF.value.decode(errors="replace").rstrip("\n").split("\n"))
    return 0


_print_cb = _PRINT_CB(_on_print)
_lib.libbpf_set_print(_print_cb)


def libbpf_log(last: int = 60) -> list[str]:
    """The last lines libbpf printed (verifier logs on load failures)."""
    return list(_LOG)[-last:]


class Closing:
    """`with X() as x:` closes x at the end; subclasses define `close`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class BpfError(OSError):
    """A libbpf call failed; carries errno and its text."""

    def __init__(self, what: str, err: int, log: list[str] | None = None) -> None:
        err = abs(err)
        super().__init__(err, f"{what}: {os.strerror(err)} (errno {err})")
        self.what = what
        self.log = log or []

    def __str__(self) -> str:
        text = f"{self.strerror}"
        if self.log:
            text += "\n" + "\n".join(self.log)
        return text


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise BpfError(what, -ret)
    return ret


def _ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        raise BpfError(what, ctypes.get_errno() or errno_mod.EINVAL)
    return ptr


def num_possible_cpus() -> int:
    """Number of possible CPUs (per-CPU map values have one slot each)."""
    return _check(_lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def obj_get(path: str | Path) -> int:
    """Open a pinned BPF object (map, program, link); returns its fd."""
    return _check(_lib.bpf_obj_get(str(path).encode()), f"bpf_obj_get {path}")


class Link:
    """An attachment; destroying it detaches the program."""

    def __init__(self, ptr: int, what: str) -> None:
        self._ptr: int | None = ptr
        self.what = what

    def pin(self, path: str | Path) -> None:
        """Pin the link in bpffs (it then outlives this process)."""
        assert self._ptr
        _check(_lib.bpf_link__pin(self._ptr, str(path).encode()), f"pin link {path}")

    def destroy(self) -> None:
        """Detach (unless pinned) and free."""
        if self._ptr:
            _lib.bpf_link__destroy(self._ptr)
            self._ptr = None


class Program:
    """A BPF program of an opened object."""

    def __init__(self, ptr: int, name: str) -> None:
        self._ptr = ptr
        self.name = name

    @property
    def fd(self) -> int:
        """The program fd (after load)."""
        return _check(_lib.bpf_program__fd(self._ptr), f"fd of {self.name}")

    def set_autoload(self, autoload: bool) -> None:
        """Include or skip this program at load (before load only)."""
        _check(_lib.bpf_program__set_autoload(self._ptr, autoload), f"autoload {self.name}")

    def set_attach_target(self, function: str) -> None:
        """Attach a BTF program to `function` (a kernel function or tracepoint) instead of
        the one its SEC() names (before load only)."""
        _check(
            _lib.bpf_program__set_attach_target(self._ptr, 0, function.encode()),
            f"attach target {self.name}",
        )

    def attach(self) -> Link:
        """Attach as the program's section says (tp_btf, lsm, tracepoint/...)."""
        p = _ptr(_lib.bpf_program__attach(self._ptr), f"attach {self.name}")
        return Link(p, self.name)

    def attach_tracepoint(self, category: str, name: str, cookie: int = 0) -> Link:
        """Attach to tracepoint category/name (needs tracefs); the program reads `cookie`
        with bpf_get_attach_cookie."""
        opts = _TracepointOpts(ctypes.sizeof(_TracepointOpts), cookie)
        p = _lib.bpf_program__attach_tracepoint_opts(
            self._ptr, category.encode(), name.encode(), ctypes.byref(opts)
        )
        return Link(_ptr(p, f"attach {self.name} to {category}/{name}"), f"{category}/{name}")

    def attach_lsm(self) -> Link:
        """Attach a BPF LSM program."""
        p = _ptr(_lib.bpf_program__attach_lsm(self._ptr), f"attach lsm {self.name}")
        return Link(p, self.name)


class Map:
    """A BPF map; keys and values are raw bytes of the exact sizes."""

    def __init__(self, ptr: int, name: str) -> None:
        self._ptr = ptr
        self.name = name
        self.key_size = int(_lib.bpf_map__key_size(ptr))
        self.value_size = int(_lib.bpf_map__value_size(ptr))
        self.max_entries = int(_lib.bpf_map__max_entries(ptr))
        self.type = int(_lib.bpf_map__type(ptr))

    @property
    def fd(self) -> int:
        """The map fd (after load)."""
        return _check(_lib.bpf_map__fd(self._ptr), f"fd of map {self.name}")

    @property
    def percpu(self) -> bool:
        """Whether values have one slot per possible CPU."""
        return self.type in _PERCPU_MAP_TYPES

    def _vsize(self) -> int:
        if self.percpu:
            return ((self.value_size + 7) // 8 * 8) * num_possible_cpus()
        return self.value_size

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.key_size:
            raise ValueError(f"{self.name}: key is {len(key)} bytes, want {self.key_size}")
        return ctypes.create_string_buffer(key, len(key))

    def lookup(self, key: bytes) -> bytes | None:
        """The value (all CPUs concatenated for per-CPU maps) or None."""
        k = self._key(key)
        v = ctypes.create_string_buffer(self._vsize())
        ret = _lib.bpf_map_lookup_elem(self.fd, k, v)
        if ret < 0:
            if -ret == errno_mod.ENOENT:
                return None
            raise BpfError(f"lookup in {self.name}", -ret)
        return v.raw

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        """Per-CPU values of a per-CPU map."""
        raw = self.lookup(key)
        if raw is None:
            return []
        step = (self.value_size + 7) // 8 * 8
        return [raw[i : i + self.value_size] for i in range(0, len(raw), step)]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Insert or replace one entry."""
        if len(value) != self._vsize():
            raise ValueError(f"{self.name}: value is {len(value)} bytes, want {self._vsize()}")
        k = self._key(key)
        v = ctypes.create_string_buffer(value, len(value))
        _check(_lib.bpf_map_update_elem(self.fd, k, v, flags), f"update {self.name}")

    def update_batch(self, items: list[tuple[bytes, bytes]]) -> None:
        """Insert or replace many entries in one syscall (hash/array maps)."""
        if not items:
            return
        keys = b"".join(self._key(k).raw[: self.key_size] for k, _ in items)
        vals = b"".join(v for _, v in items)
        if len(vals) != len(items) * self._vsize():
            raise ValueError(f"{self.name}: bad value sizes in batch")
        count = _u32(len(items))
        kb = ctypes.create_string_buffer(keys, len(keys))
        vb = ctypes.create_string_buffer(vals, len(vals))
        ret = _lib.bpf_map_update_batch(self.fd, kb, vb, ctypes.byref(count), None)
        _check(ret, f"update_batch {self.name} ({count.value}/{len(items)} done)")

    def delete(self, key: bytes) -> bool:
        """Delete one entry; False if it wasn't there."""
        ret = _lib.bpf_map_delete_elem(self.fd, self._key(key))
        if ret < 0:
            if -ret == errno_mod.ENOENT:
                return False
            raise BpfError(f"delete in {self.name}", -ret)
        return True

    def keys(self) -> Iterator[bytes]:
        """All keys (snapshot-free iteration via get_next_key)."""
        cur: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = _lib.bpf_map_get_next_key(self.fd, cur, nxt)
            if ret < 0:
                if -ret == errno_mod.ENOENT:
                    return
                raise BpfError(f"get_next_key in {self.name}", -ret)
            yield nxt.raw
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def pin(self, path: str | Path) -> None:
        """Pin the map in bpffs."""
        _check(_lib.bpf_map__pin(self._ptr, str(path).encode()), f"pin {self.name} at {path}")

    def unpin(self, path: str | Path) -> None:
        """Remove the map's pin."""
        _check(_lib.bpf_map__unpin(self._ptr, str(path).encode()), f"unpin {self.name}")


class BpfObject(Closing):
    """An opened (then loaded) BPF ELF object."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _LOG.clear()
        self._ptr: int | None = _ptr(
            _lib.bpf_object__open_file(str(path).encode(), None), f"open {path}"
        )

    def load(self) -> None:
        """Load all autoload programs and create the maps (runs the verifier)."""
        _LOG.clear()
        ret = _lib.bpf_object__load(self._live())
        if ret < 0:
            raise BpfError(f"load {self.path.name}", -ret, libbpf_log())

    def _live(self) -> int:
        if not self._ptr:
            raise BpfError(f"{self.path} is closed", errno_mod.EBADF)
        return self._ptr

    def program(self, name: str) -> Program:
        """Find a program by its C function name."""
        p = _lib.bpf_object__find_program_by_name(self._live(), name.encode())
        return Program(_ptr(p, f"program {name}"), name)

    def map(self, name: str) -> Map:
        """Find a map by name."""
        p = _lib.bpf_object__find_map_by_name(self._live(), name.encode())
        return Map(_ptr(p, f"map {name}"), name)

    def close(self) -> None:
        """Unload everything (links must be destroyed first)."""
        if self._ptr:
            _lib.bpf_object__close(self._ptr)
            self._ptr = None


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", _u32), ("info", _u32), ("size", _u32)]  # struct btf_type


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", _u32), ("type", _u32), ("offset", _u32)]  # struct btf_member


class _BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", _u32), ("val", ctypes.c_int32)]  # struct btf_enum


_BTF_KIND_STRUCT: Final = 4
_BTF_KIND_ENUM: Final = 6


class Btf(Closing):
    """The BTF of an object file (or a raw BTF file): its named enums and structs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._ptr: int | None = _ptr(_lib.btf__parse(str(path).encode(), None), f"BTF of {path}")

    def _find(self, name: str, kind: int) -> tuple[_BtfType, int]:
        assert self._ptr
        type_id = _lib.btf__find_by_name_kind(self._ptr, name.encode(), kind)
        if type_id < 0:
            raise KeyError(f"{self.path.name}: no BTF type {name!r}")
        t = _BtfType.from_address(_lib.btf__type_by_id(self._ptr, type_id))
        return t, ctypes.addressof(t) + ctypes.sizeof(_BtfType)

    def _name(self, off: int) -> str:
        return (_lib.btf__name_by_offset(self._ptr, off) or b"").decode()

    def enum(self, name: str) -> dict[str, int]:
        """enum `name`'s enumerators and values."""
        t, at = self._find(name, _BTF_KIND_ENUM)
        vals = (_BtfEnum * (t.info & 0xFFFF)).from_address(at)
        return {self._name(v.name_off): v.val for v in vals}

    def struct(self, name: str) -> tuple[int, dict[str, int]]:
        """struct `name`'s size and its members' byte offsets (no bit fields)."""
        t, at = self._find(name, _BTF_KIND_STRUCT)
        bitfields = t.info >> 31
        members = (_BtfMember * (t.info & 0xFFFF)).from_address(at)
        offsets = {}
        for m in members:
            bits = m.offset & 0xFFFFFF if bitfields else m.offset
            offsets[self._name(m.name_off)] = bits // 8
        return t.size, offsets

    def close(self) -> None:
        """Free the parsed BTF."""
        if self._ptr:
            _lib.btf__free(self._ptr)
            self._ptr = None


class RingBuffer:
    """A libbpf ring-buffer consumer calling `callback(record_bytes)` for the records of one
    or more ring-buffer maps (each consume reads them in the order given). `urgent`: those of
    the maps whose records end a `gather` at once."""

    def __init__(
        self, maps: Sequence[Map], callback: Callable[[bytes], None], urgent: Sequence[Map] = ()
    ) -> None:
        self._callback = callback
        self._urgent = select.epoll()
        for m in urgent:
            self._urgent.register(m.fd, select.EPOLLIN)  # readable: the ring has a record
        self._error: BaseException | None = None
        self._limit = 0  # records per poll/consume (0: all there are)
        self._taken = 0
        self._cb = _SAMPLE_CB(self._on_sample)
        first, *rest = maps
        self._ptr: int | None = _ptr(
            _lib.ring_buffer__new(first.fd, self._cb, None, None), f"ring_buffer {first.name}"
        )
        for m in rest:
            ret = _lib.ring_buffer__add(self._ptr, m.fd, self._cb, None)
            if ret < 0:
                self.close()
                raise BpfError(f"ring_buffer__add {m.name}", -ret)

    def _on_sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        try:
            self._callback(ctypes.string_at(data or 0, size))
        except BaseException as exc:  # re-raised after the poll returns
            self._error = exc
            return -1
        self._taken += 1
        # a negative return stops libbpf's loop (this record is consumed); else it goes on
        # for as long as records keep coming, and a flood would never let the caller run
        return -errno_mod.EAGAIN if self._taken == self._limit else 0

    def _raise(self, ret: int, what: str) -> int:
        taken, self._taken = self._taken, 0
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if taken == self._limit and ret == -errno_mod.EAGAIN:
            return taken
        if ret < 0 and -ret != errno_mod.EINTR:
            raise BpfError(what, -ret)
        return max(ret, 0)

    def poll(self, timeout_ms: int, limit: int = 0) -> int:
        """Wait up to timeout_ms for records and consume them, at most `limit` (0: no limit);
        returns how many were consumed."""
        assert self._ptr
        self._limit = limit
        return self._raise(_lib.ring_buffer__poll(self._ptr, timeout_ms), "ring_buffer__poll")

    @property
    def epoll_fd(self) -> int:
        """Readable when a record is there: to wait for records and something else at once."""
        assert self._ptr
        return int(_lib.ring_buffer__epoll_fd(self._ptr))

    def consume(self, limit: int = 0) -> int:
        """Consume what is there without waiting, at most `limit` (0: no limit)."""
        assert self._ptr
        self._limit = limit
        return self._raise(_lib.ring_buffer__consume(self._ptr), "ring_buffer__consume")

    def gather(self, timeout_ms: int, wake: int | None = None) -> None:
        """Wait up to timeout_ms without consuming, so that records gather; returns at once
        when an urgent map has one, or `wake` (an fd, left unread) is readable. (The kernel
        wakes the reader for every record that finds the ring empty: a reader that consumes
        each as it comes costs the producer an IRQ work and a wakeup per record.)"""
        if wake is None:
            self._urgent.poll(timeout_ms / 1000)
            return
        self._urgent.register(wake, select.EPOLLIN)
        try:
            self._urgent.poll(timeout_ms / 1000)
        finally:
            self._urgent.unregister(wake)

    def close(self) -> None:
        """Free the consumer."""
        self._urgent.close()
        if self._ptr:
            _lib.ring_buffer__free(self._ptr)
            self._ptr = None
