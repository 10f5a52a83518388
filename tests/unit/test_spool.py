"""The Elasticsearch spool against hostile or damaged directories (found by attacking it):
nothing in the spool directory may stop the sensor or the delivery of the rest."""

from __future__ import annotations

from pathlib import Path

from stockade.sensor.elastic.spool import Item, Spool

ITEM = Item("logs-cloud_defend.alerts-default", "id-1", b'{"a":1}')


def segment(spool_dir: Path, lane: str, number: int, data: bytes) -> Path:
    path = spool_dir / lane / f"{number:020d}.seg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_files_that_are_not_segments_are_left_alone_and_named(tmp_path: Path) -> None:
    segment(tmp_path, "alerts", 10**12, ITEM.line())
    (tmp_path / "alerts" / "garbage.seg").write_text("hello\n")
    (tmp_path / "alerts" / f"{5:020d}.seg").mkdir()
    spool = Spool(tmp_path, 1 << 20)
    assert sorted(p.name for p in spool.foreign) == [f"{5:020d}.seg", "garbage.seg"]
    assert spool.head(10) == ("alerts", [ITEM])
    assert (tmp_path / "alerts" / "garbage.seg").read_text() == "hello\n"


def test_a_line_that_is_not_an_item_is_set_aside_and_the_rest_goes_on(tmp_path: Path) -> None:
    segment(tmp_path, "alerts", 10**12, b"no tabs here\n\xff\xfe\t\x00\tx\n" + ITEM.line())
    segment(tmp_path, "logs", 10**12, b"only garbage\n")
    spool = Spool(tmp_path, 1 << 20)
    assert spool.head(10) == ("alerts", [ITEM])
    assert spool.take_unreadable() == [b"no tabs here\n", b"\xff\xfe\t\x00\tx\n"]
    spool.settle("alerts", 1, [])
    assert spool.head(10) == ("", [])  # the logs lane held nothing that can be sent
    assert spool.take_unreadable() == [b"only garbage\n"]
    assert not spool


def test_a_front_segment_that_cannot_be_written_commits_nothing(tmp_path: Path) -> None:
    second = Item(ITEM.index, "id-2", b'{"a":2}')
    segment(tmp_path, "alerts", 10**12, ITEM.line() + second.line())
    (tmp_path / "alerts" / f"{10**12 - 1:020d}.seg").mkdir()  # where the retry would go
    spool = Spool(tmp_path, 1 << 20)
    assert spool.head(10) == ("alerts", [ITEM, second])
    spool.settle("alerts", 2, [second])  # can't write `second` back: nothing is committed
    assert spool.head(10) == ("alerts", [ITEM, second])
