"""A bounded on-disk queue of documents waiting for Elasticsearch, alerts before logs.

Two lanes (`alerts`, `logs`), each a directory of numbered segment files holding one
`index<TAB>id<TAB>source-json` line per document, oldest segment first. The writer takes
batches from the head (alerts lane first) and commits them once every document in the
batch is final (delivered, already there or dead-lettered); documents to retry go back
to the front as a segment numbered below the head. Nothing but the files is state: after
a restart the spool is read back and drained. A document delivered but not yet committed
when the sensor stopped is sent again and answered 409 (its `_id` is deterministic), so
replays never duplicate.

Full spool: an alert evicts the oldest log segment(s); a log that doesn't fit is dropped;
an alert is dropped only when no logs are left to evict. Every drop is counted.
"""

from __future__ import annotations

import re
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LANES", "Item", "Spool"]

LANES = ("alerts", "logs")
SEGMENT_BYTES = 1 << 20  # at most; a small spool gets ~16 segments per lane to evict from
_FIRST = 10**12  # segment numbers start here so that front segments stay positive
_SEGMENT_NAME = re.compile(r"[0-9]{20}\.seg")


@dataclass(frozen=True)
class Item:
    """One document on its way: its data stream, `_id` and JSON source."""

    index: str
    id: str
    source: bytes

    def line(self) -> bytes:
        return b"%s\t%s\t%s\n" % (self.index.encode(), self.id.encode(), self.source)

    @classmethod
    def parse(cls, line: bytes) -> Item | None:
        """The item a spool line holds; None for a line this spool didn't write."""
        try:
            index, id_, source = line.rstrip(b"\n").split(b"\t", 2)
            return cls(index.decode(), id_.decode(), source)
        except ValueError:  # also UnicodeDecodeError
            return None


@dataclass
class _Segment:
    number: int
    bytes: int
    count: int
    done: int = 0  # items committed (only ever non-zero for the head)


@dataclass
class _Lane:
    directory: Path
    segments: list[_Segment] = field(default_factory=list)
    head: list[Item] | None = None  # the head segment's items, read when first needed
    segment_bytes: int = SEGMENT_BYTES
    tail_open: bool = False  # may the last segment still be appended to
    foreign: list[Path] = field(default_factory=list)  # files here that aren't segments: left
    unreadable: list[bytes] = field(default_factory=list)  # lines that aren't items: set aside

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.iterdir()):
            if not (_SEGMENT_NAME.fullmatch(path.name) and path.is_file()):
                self.foreign.append(path)
                continue
            data = path.read_bytes()
            if not data.endswith(b"\n"):  # torn by a crash mid-append: keep whole lines
                data = data[: data.rfind(b"\n") + 1]
                path.write_bytes(data)
            if data:
                self.segments.append(_Segment(int(path.stem), len(data), data.count(b"\n")))
            else:
                path.unlink()

    def path(self, number: int) -> Path:
        return self.directory / f"{number:020d}.seg"

    @property
    def count(self) -> int:
        return sum(s.count - s.done for s in self.segments)

    @property
    def size(self) -> int:
        return sum(s.bytes for s in self.segments)

    def append(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        if not (self.tail_open and self.segments[-1].bytes < self.segment_bytes):
            number = self.segments[-1].number + 1 if self.segments else _FIRST
            self.segments.append(_Segment(number, 0, 0))
            self.tail_open = True
        tail = self.segments[-1]
        with self.path(tail.number).open("ab") as f:
            f.write(data)
        tail.bytes += len(data)
        tail.count += len(lines)

    def peek(self, n: int) -> list[Item]:
        while self.segments:
            first = self.segments[0]
            if self.head is None:
                if len(self.segments) == 1:
                    self.tail_open = False  # the head is read into memory: append elsewhere
                self.head = []
                for line in self.path(first.number).read_bytes().splitlines(keepends=True):
                    item = Item.parse(line)
                    if item is not None:
                        self.head.append(item)
                    elif first.done == 0:  # read the first time: set it aside once
                        self.unreadable.append(line)
                first.count = len(self.head)
            if first.done < first.count:
                return self.head[first.done : first.done + n]
            self.drop_head()  # nothing (left) in it that can be sent
        return []

    def settle(self, n: int, again: list[Item]) -> None:
        """The first n items of the head are done; `again` go back in front of the rest.
        The front segment is written before the head is shortened: a crash in between
        replays (harmless), never loses."""
        first = self.segments[0]
        front: _Segment | None = None
        if again:
            data = b"".join(i.line() for i in again)
            front = _Segment(first.number - 1, len(data), len(again))
            try:
                self.path(front.number).write_bytes(data)
            except OSError:  # a full disk: commit nothing, the whole batch is sent again
                with suppress(OSError):  # (the delivered ones are answered 409)
                    self.path(front.number).unlink()
                return
        first.done += n
        if first.done >= first.count:
            self.drop_head()
        if front is not None:
            self.segments.insert(0, front)
            self.head = None

    def drop_head(self) -> int:
        """Remove the head segment; how many uncommitted items it held."""
        seg = self.segments.pop(0)
        self.path(seg.number).unlink(missing_ok=True)
        if not self.segments:
            self.tail_open = False
        self.head = None
        return seg.count - seg.done


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        segment = max(4096, min(SEGMENT_BYTES, max_bytes // 16))
        self.lanes = {name: _Lane(directory / name, segment_bytes=segment) for name in LANES}
        self.dropped: Counter[str] = Counter()  # per lane

    @property
    def size(self) -> int:
        return sum(lane.size for lane in self.lanes.values())

    def count(self) -> int:
        return sum(lane.count for lane in self.lanes.values())

    def __bool__(self) -> bool:
        return any(lane.segments for lane in self.lanes.values())

    def append(self, lane: str, items: list[Item]) -> None:
        """Keep items behind what is there; drops (counted) when the spool is full."""
        used = self.size
        lines: list[bytes] = []
        logs = self.lanes["logs"]
        for item in items:
            line = item.line()
            while used + len(line) > self.max_bytes and lane == "alerts" and logs.segments:
                freed = logs.segments[0].bytes
                self.dropped["logs"] += logs.drop_head()
                used -= freed
            if used + len(line) > self.max_bytes:
                self.dropped[lane] += 1
                continue
            lines.append(line)
            used += len(line)
        if lines:
            self.lanes[lane].append(lines)

    @property
    def foreign(self) -> list[Path]:
        return [path for lane in self.lanes.values() for path in lane.foreign]

    def take_unreadable(self) -> list[bytes]:
        """Lines found in segments that aren't items (damaged, or not written here)."""
        lines = [line for lane in self.lanes.values() for line in lane.unreadable]
        for lane in self.lanes.values():
            lane.unreadable.clear()
        return lines

    def head(self, n: int) -> tuple[str, list[Item]]:
        """The next batch to deliver: the alerts lane first."""
        for name, lane in self.lanes.items():
            items = lane.peek(n)
            if items:
                return name, items
        return "", []

    def settle(self, lane: str, n: int, again: list[Item]) -> None:
        """The first n items of the lane's head are done, except `again`, which go back first."""
        self.lanes[lane].settle(n, again)
