"""Where the sensor's documents go: `jsonl:PATH` (`jsonl:-`: stdout) or
`elasticsearch:URL` (`elasticsearch` alone: $ELASTICSEARCH_URL)."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import suppress
from pathlib import Path
from typing import Protocol, TextIO

from stockade.sensor.ecs import Document, serialize

__all__ = ["JsonlOutput", "Output", "OutputSpec", "add_arguments", "open_output"]

log = logging.getLogger("stockade.sensor")


class Output(Protocol):
    def write(self, doc: Document) -> None: ...

    def flush(self) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class JsonlOutput:
    """One JSON document per line on a text stream (closed with the output if owned).

    A stream that can't be written (a full disk) loses documents, never enforcement: they
    are counted in `output_lost` (the documents written since the last flush that failed,
    so at most what was lost) and the sensor goes on.
    """

    def __init__(self, stream: TextIO, owned: bool = False) -> None:
        self.stream = stream
        self.owned = owned
        self.lost = 0
        self._unflushed = 0
        self._failing = False

    def write(self, doc: Document) -> None:
        self._unflushed += 1
        try:
            self.stream.write(serialize(doc).decode() + "\n")
        except OSError as exc:
            self._failed(exc)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            self._failed(exc)
        else:
            self._failing = False
        self._unflushed = 0

    def _failed(self, exc: OSError) -> None:
        self.lost += self._unflushed
        self._unflushed = 0
        if not self._failing:
            log.warning(f"can't write the output: {exc.strerror}; documents are lost until it can")
        self._failing = True

    def stats(self) -> dict[str, int]:
        return {"output_lost": self.lost}

    def close(self) -> None:
        if self.stream.closed:
            return
        self.flush()
        if self.owned:
            with suppress(OSError):  # what it still held is counted as lost
                self.stream.close()


class OutputSpec:
    """The parsed `--output` value (argparse type: a bad value is a one-line usage error)."""

    def __init__(self, spec: str) -> None:
        kind, sep, target = spec.partition(":")
        if kind == "jsonl" and target:
            self.kind, self.target = kind, target
        elif kind == "elasticsearch":
            self.kind, self.target = kind, target if sep else ""
        else:
            raise argparse.ArgumentTypeError(
                f"{spec!r}: want jsonl:PATH (jsonl:- for stdout) or elasticsearch[:URL]"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stockade.sensor.elastic import config

    parser.add_argument(
        "--output", required=True, type=OutputSpec, metavar="jsonl:PATH|elasticsearch[:URL]",
        help="where documents go (elasticsearch alone: $ELASTICSEARCH_URL)",
    )  # fmt: skip
    config.add_arguments(parser)
    parser.add_argument(
        "--spool-dir", type=Path, metavar="DIR",
        help="where documents wait while Elasticsearch can't take them "
        "(default: STATE_DIR/elasticsearch)",
    )  # fmt: skip
    parser.add_argument(
        "--spool-max-mb", type=int, default=1024, metavar="MB",
        help="spool bound; when full, logs are dropped before alerts (default 1024)",
    )  # fmt: skip


def open_output(args: argparse.Namespace) -> Output:
    """Open the output the arguments name; raises ConfigError (one line) if it can't be."""
    spec: OutputSpec = args.output
    if spec.kind == "jsonl":
        if spec.target == "-":
            return JsonlOutput(sys.stdout)
        return JsonlOutput(Path(spec.target).open("a", encoding="utf-8"), owned=True)
    from stockade.sensor.elastic.config import ElasticConfig
    from stockade.sensor.elastic.writer import ElasticOutput

    cfg = ElasticConfig.from_args(spec.target or None, args)
    spool = args.spool_dir or Path(args.state_dir) / "elasticsearch"
    return ElasticOutput(cfg, spool, spool_max_bytes=args.spool_max_mb << 20)
