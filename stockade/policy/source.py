"""Reading the YAML and JSON files Stockade is handed, under limits: the one reader.

Policies, events, pod lists and the standalone sensor's containers file are all read
here. libyaml (PyYAML's C parser) turns the text into events; this module builds the
values from them in one pass, without recursion, and refuses what would hurt:

- a file larger than `MAX_FILE_BYTES` (the Kubernetes apiserver's request limit), before
  anything is parsed;
- a character YAML forbids (NUL, other control characters, U+FFFE), with its position;
- more than `MAX_NODES` values in one file, an alias counting as all it stands for, so an
  alias bomb is refused after a few hundred bytes instead of expanding;
- nesting deeper than `MAX_DEPTH`;
- a key given twice in one mapping (naming both lines), a key that isn't a scalar;
- an integer beyond 64 bits, a tag PyYAML's safe loader doesn't know.

Every refusal is a `SourceError` whose message is one line, `FILE: problem (line N, column
C)`. JSON goes through the same parser with JSON's rules on top (flow style, quoted
strings, JSON literals, one value): libyaml reads any JSON except surrogate-pair escapes,
which are joined first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml import events as ev
from yaml._yaml import CParser

Loc = tuple[str | int, ...]

# The Kubernetes apiserver refuses a request body above 3 MiB, so no policy manifest is
# larger; the same bound holds for every file Stockade reads (pod lists may be split).
MAX_FILE_BYTES = 3 * 1024 * 1024
# Values in one file, aliases counted as expanded: about what a file of MAX_FILE_BYTES can
# hold without aliases, so aliases never make a file worth more than its size allows.
MAX_NODES = 2**21
# Collections inside collections; a manifest needs about ten, a Pod about twenty.
MAX_DEPTH = 64
MAX_INT_BITS = 64

# What YAML 1.1 allows in a stream (its printable set); anything else is refused.
_NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SURROGATE_PAIR = re.compile(
    r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.I
)
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_JSON_LITERALS = {"true": True, "false": False, "null": None}

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_MERGE = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = {None, "!", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.SafeLoader("")  # its scalar constructors turn tagged scalars into values


def _why(exc: Exception) -> str:
    """A PyYAML constructor's complaint without its marks (ours are better), and something
    to say where it indexes an empty `!!int` blindly."""
    if isinstance(exc, IndexError):
        return "it is empty"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        return exc.problem
    return str(exc)


class SourceError(Exception):
    """A file that can't be read or is refused; the message is one line naming the file."""


@dataclass
class YamlDocument:
    """One YAML document (or the JSON value) of a file, with the line of every field."""

    data: Any
    line: int  # where the document starts (1-based)
    lines: dict[Loc, int] = field(default_factory=dict)  # field path → line

    def line_of(self, loc: Loc) -> int | None:
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.line


def shown(text: object) -> str:
    """Text from a file as a message shows it: quoted if it would break the line."""
    out = str(text)
    return out if out.isprintable() else repr(out)


def format_path(loc: Loc) -> str:
    """`a.b[0].c`, with keys `shown`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{shown(part)}" if out else shown(part))
    return out


def read_text(path: Path) -> str:
    """The file's text; refused above MAX_FILE_BYTES before it is read whole."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SourceError(f"{path}: can't read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SourceError(
            f"{path}: larger than {MAX_FILE_BYTES} bytes (MAX_FILE_BYTES: 3 MiB, the "
            "Kubernetes apiserver's request limit); split it into several files"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SourceError(
            f"{path}: not UTF-8 text: byte {data[exc.start]:#04x} (line {line}, column {column})"
        ) from None


def read_yaml(path: Path) -> list[YamlDocument]:
    """Every non-empty document of a YAML file (JSON is YAML too)."""
    return parse_yaml(read_text(path), str(path))


def read_json(path: Path) -> YamlDocument:
    """The one JSON value of a file."""
    return parse_json(read_text(path), str(path))


def parse_yaml(text: str, source: str) -> list[YamlDocument]:
    return [d for d in _Builder(text, source, json=False).documents() if d.data is not None]


def parse_json(text: str, source: str) -> YamlDocument:
    text = _SURROGATE_PAIR.sub(_join_surrogates, text)
    documents = list(_Builder(text, source, json=True).documents())
    if not documents:
        raise SourceError(f"{source}: not valid JSON: no value (line 1)")
    if len(documents) > 1:
        raise SourceError(
            f"{source}: not valid JSON: more than one value (line {documents[1].line})"
        )
    return documents[0]


def _join_surrogates(m: re.Match[str]) -> str:
    high, low = int(m[2], 16), int(m[3], 16)
    return m[1] + chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))


class _Collection:
    """A list or dict being filled, with what the limits and line table need."""

    __slots__ = ("anchor", "first_node", "height", "key", "key_lines", "loc", "merges", "value")

    def __init__(self, value: list[Any] | dict[Any, Any], loc: Loc, anchor: str | None, first: int):
        self.value = value
        self.loc = loc
        self.anchor = anchor
        self.first_node = first  # the node count when it started: its size at the end
        self.height = 1  # collections from here down, itself included
        self.key: Any = _NO_KEY  # a mapping's key waiting for its value
        self.key_lines: dict[Any, int] = {}
        self.merges: list[tuple[Any, int]] = []  # `<<` values, merged at the end


_NO_KEY = object()  # a mapping waits for a key
_MERGE_KEY = object()  # a mapping's `<<` waits for what it merges


@dataclass(frozen=True)
class _Anchor:
    value: Any
    nodes: int
    height: int


class _Builder:
    def __init__(self, text: str, source: str, json: bool):
        self.text = text
        self.source = source
        self.json = json
        self.what = "JSON" if json else "YAML"
        self.nodes = 0

    def fail(self, problem: str, mark: Any = None, line: int | None = None) -> SourceError:
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1
            last = self.text.count("\n") + 1
            if line > last:  # libyaml puts the end after an unterminated last line
                line, column = last, len(self.text.rsplit("\n", 1)[-1]) + 1
            where = f" (line {line}, column {column})"
        elif line is not None:
            where = f" (line {line})"
        else:
            where = ""
        problem = " ".join(problem.split())  # one line, whatever a library's message held
        return SourceError(f"{self.source}: {problem}{where}")

    def documents(self) -> Iterator[YamlDocument]:
        bad = _NOT_PRINTABLE.search(self.text)
        if bad:
            pos = bad.start()
            line = self.text.count("\n", 0, pos) + 1
            column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
            raise self.fail(
                f"character U+{ord(bad[0]):04X} is not allowed in {self.what} text "
                f"(line {line}, column {column})"
            )
        parser = CParser(self.text)
        try:
            while True:
                event: Any = parser.get_event()
                if isinstance(event, ev.DocumentStartEvent):
                    yield self.document(parser, event)
                elif event is None or isinstance(event, ev.StreamEndEvent):
                    return
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise self.fail(f"not valid {self.what}: {exc.problem or exc}", mark) from None
        except yaml.YAMLError as exc:
            raise self.fail(f"not valid {self.what}: {exc}") from None
        finally:
            parser.dispose()

    def document(self, parser: CParser, start: Any) -> YamlDocument:
        doc = YamlDocument(None, start.start_mark.line + 1)
        anchors: dict[str, _Anchor] = {}
        stack: list[_Collection] = []
        root: list[Any] = []

        def place(value: Any, mark: Any) -> Loc:
            """Put a new value where the open collection expects it; its field path."""
            if not stack:
                root.append(value)
                return ()
            top = stack[-1]
            if isinstance(top.value, list):
                loc: Loc = (*top.loc, len(top.value))
                doc.lines[loc] = mark.line + 1
                top.value.append(value)
                return loc
            if top.key is _NO_KEY:
                raise self.fail("a key must be a string or another scalar", mark)
            key, top.key = top.key, _NO_KEY
            if key is _MERGE_KEY:
                top.merges.append((value, mark.line + 1))
                return (*top.loc, "<<")
            top.value[key] = value
            return (*top.loc, key) if isinstance(key, str | int) else top.loc

        def key_or_place(value: Any, mark: Any, merge: bool = False) -> None:
            """A scalar or alias: the key an open mapping waits for, else a value."""
            top = stack[-1] if stack else None
            if top is None or not isinstance(top.value, dict) or top.key is not _NO_KEY:
                place(value, mark)
                return
            if merge:
                top.key = _MERGE_KEY
                return
            try:
                hash(value)
            except TypeError:
                raise self.fail("a key must be a string or another scalar", mark) from None
            if value in top.key_lines:
                raise self.fail(
                    f"duplicate key {value!r} (lines {top.key_lines[value]} and "
                    f"{mark.line + 1}): a key may appear once in a mapping"
                )
            top.key_lines[value] = mark.line + 1
            if isinstance(value, str | int):
                doc.lines[(*top.loc, value)] = mark.line + 1
            top.key = value

        def count(nodes: int, mark: Any) -> None:
            self.nodes += nodes
            if self.nodes > MAX_NODES:
                raise self.fail(
                    f"more than {MAX_NODES} values in one file (MAX_NODES; an alias counts as "
                    "every value it repeats)",
                    mark,
                )

        def depth_check(height: int, mark: Any) -> None:
            if len(stack) + height > MAX_DEPTH:
                raise self.fail(f"nested deeper than {MAX_DEPTH} levels (MAX_DEPTH)", mark)

        while True:
            event: Any = parser.get_event()
            mark = event.start_mark
            if isinstance(event, ev.ScalarEvent):
                count(1, mark)
                value = self.scalar(event)
                merge = (
                    not self.json and event.tag is None and not event.style and event.value == "<<"
                )
                key_or_place(value, mark, merge)
                if event.anchor is not None:
                    anchors[event.anchor] = _Anchor(value, 1, 0)
            elif isinstance(event, ev.AliasEvent):
                if self.json:
                    raise self.fail("not valid JSON: an alias", mark)
                anchor = anchors.get(event.anchor or "")
                if anchor is None:
                    raise self.fail(
                        f"alias *{event.anchor} names no complete anchor before it", mark
                    )
                count(anchor.nodes, mark)
                depth_check(anchor.height, mark)
                key_or_place(anchor.value, mark)
            elif isinstance(event, ev.SequenceStartEvent | ev.MappingStartEvent):
                self.check_collection(event)
                depth_check(1, mark)
                count(1, mark)
                new: list[Any] | dict[Any, Any] = (
                    [] if isinstance(event, ev.SequenceStartEvent) else {}
                )
                loc = place(new, mark)
                stack.append(_Collection(new, loc, event.anchor, self.nodes))
            elif isinstance(event, ev.SequenceEndEvent | ev.MappingEndEvent):
                done = stack.pop()
                if done.merges:
                    self.merge(done)
                if stack:
                    stack[-1].height = max(stack[-1].height, done.height + 1)
                if done.anchor is not None:
                    anchors[done.anchor] = _Anchor(
                        done.value, self.nodes - done.first_node + 1, done.height
                    )
            elif isinstance(event, ev.DocumentEndEvent):
                doc.data = root[0] if root else None
                return doc

    def scalar(self, event: Any) -> Any:
        mark = event.start_mark
        if self.json:
            if event.anchor is not None or event.tag is not None:
                raise self.fail("not valid JSON: a YAML anchor or tag", mark)
            if event.style == '"':
                return event.value
            if event.style:
                raise self.fail("not valid JSON: strings take double quotes", mark)
            if event.value in _JSON_LITERALS:
                return _JSON_LITERALS[event.value]
            number = _JSON_NUMBER.fullmatch(event.value)
            if number is None:
                raise self.fail(f"not valid JSON: {event.value[:40]!r} needs double quotes", mark)
            if number[2] or number[3]:
                return float(event.value)
            return self.integer(event.value, mark)
        tag = event.tag
        if tag is None and event.style:  # quoted, unless tagged: a string
            return event.value
        if tag is None or tag == "!":
            tag = _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        if tag in (_STR, _MERGE):
            return event.value
        if tag == _INT:
            return self.integer(event.value, mark)
        construct = _CONSTRUCTOR.yaml_constructors.get(tag)
        if construct is None:
            raise self.fail(f"unknown tag {tag}", mark)
        node = yaml.ScalarNode(tag, event.value, mark, event.end_mark, event.style)
        try:
            return construct(_CONSTRUCTOR, node)
        except (yaml.YAMLError, ValueError, OverflowError, IndexError) as exc:
            short = tag.rsplit(":", 1)[-1]
            raise self.fail(
                f"{event.value[:40]!r} is not a valid {short}: {_why(exc)}", mark
            ) from None

    def integer(self, text: str, mark: Any) -> int:
        """An integer within MAX_INT_BITS; longer text is refused before it is converted."""
        value = None
        if len(text) <= 100:
            if self.json:
                value = int(text)
            else:
                try:
                    value = _CONSTRUCTOR.construct_yaml_int(yaml.ScalarNode(_INT, text))
                except (ValueError, IndexError) as exc:
                    raise self.fail(f"{text!r} is not a valid int: {_why(exc)}", mark) from None
        if value is None or value.bit_length() > MAX_INT_BITS:
            number = text if len(text) <= 24 else f"{text[:20]}… ({len(text)} characters)"
            raise self.fail(
                f"the number {number} is out of range: integers are limited to {MAX_INT_BITS} bits",
                mark,
            )
        return value

    def check_collection(self, event: Any) -> None:
        if self.json:
            if event.anchor is not None or event.tag is not None or not event.flow_style:
                raise self.fail("not valid JSON: YAML block style, anchor or tag", event.start_mark)
        elif event.tag not in _COLLECTION_TAGS:
            raise self.fail(f"tag {event.tag} is not supported here", event.start_mark)

    def merge(self, done: _Collection) -> None:
        """Apply `<<` merge keys: the mapping's own keys win, then earlier merged mappings."""
        mapping = done.value
        assert isinstance(mapping, dict)
        for value, line in done.merges:
            sources = value if isinstance(value, list) else [value]
            for source in sources:
                if not isinstance(source, dict):
                    raise self.fail("<< merges a mapping or a list of mappings", line=line)
                for key, item in source.items():
                    mapping.setdefault(key, item)
