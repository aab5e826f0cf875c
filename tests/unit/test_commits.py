"""The driver's commit tracker: a file commits once all its pieces ended and each row is covered once."""

import pytest

from embedrank.io.pieces import SEQ_STRIDE
from embedrank.io.sources import Shard
from embedrank.report import RunReport
from embedrank.runtime.commits import CommitTracker
from embedrank.runtime.store import OutputStore
from embedrank.schema import decode_file_meta


def meta(tmp_path, kind, piece, ranges=(), rows=0, total=None, reasons=None):
    path = ""
    if kind in ("data", "rejected"):
        path = str(tmp_path / "staging" / f"{kind}-{piece}-{ranges[0][0]}.parquet")
        (tmp_path / "staging").mkdir(exist_ok=True)
        open(path, "wb").close()
    base = piece * SEQ_STRIDE
    return decode_file_meta(
        {
            "shard": "k",
            "kind": kind,
            "path": path,
            "rows": rows,
            "piece": piece,
            "ranges": str([[base + a, base + b] for a, b in ranges]).replace("(", "[").replace(")", "]"),
            "shard_total": total,
            "reasons": reasons,
        }
    )


@pytest.fixture
def tracker(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    shard = Shard("/in/k.parquet", "parquet", None, 1, "v", "k")
    return CommitTracker(store, [shard], RunReport(output="o", model="m"), {"run_id": "r"}, pieces={"k": 2})


def test_commits_only_when_every_piece_is_complete(tmp_path, tracker):
    tracker.add(meta(tmp_path, "data", 1, [(0, 5)], rows=5))
    tracker.add(meta(tmp_path, "end", 1, rows=5, total=5))
    assert tracker.missing() == ["k"]  # piece 0 has not ended
    tracker.add(meta(tmp_path, "end", 0, rows=7, total=7))
    tracker.add(meta(tmp_path, "data", 0, [(0, 4)], rows=4))
    assert tracker.missing() == ["k"]  # rows 4..7 of piece 0 not yet written
    tracker.add(meta(tmp_path, "rejected", 0, [(4, 7)], rows=3))
    assert tracker.missing() == []
    record = tracker.records["k"]
    assert record["rows"] == {"read": 12, "embedded": 9, "rejected": 3}
    assert record["data_pieces"] == [0, 1] and len(record["files"]["data"]) == 2


def test_rows_written_twice_are_never_committed(tmp_path, tracker):
    tracker.add(meta(tmp_path, "end", 0, rows=4, total=4))
    tracker.add(meta(tmp_path, "end", 1, rows=0, total=0))
    tracker.add(meta(tmp_path, "data", 0, [(0, 3)], rows=3))
    with pytest.raises(RuntimeError, match="written twice"):
        tracker.add(meta(tmp_path, "rejected", 0, [(2, 4)], rows=2))


def test_rows_beyond_a_piece_do_not_count(tmp_path, tracker):
    tracker.add(meta(tmp_path, "end", 0, rows=2, total=2))
    tracker.add(meta(tmp_path, "end", 1, rows=2, total=2))
    tracker.add(meta(tmp_path, "data", 0, [(0, 4)], rows=4))  # claims rows of piece 0 past its end
    assert tracker.missing() == ["k"]


def test_a_bad_piece_keeps_its_file_from_committing_and_is_reported(tmp_path, tracker):
    """input.on_bad_shard: skip: once one piece says its file broke off, nothing of the file commits, whatever
    arrives before or after, and the run does not count it as unfinished."""
    tracker.add(meta(tmp_path, "data", 0, [(0, 4)], rows=4))
    tracker.add(meta(tmp_path, "end", 0, rows=4, total=4))
    tracker.add(meta(tmp_path, "data", 1, [(0, 2)], rows=2))
    tracker.add(meta(tmp_path, "bad", 1, reasons='{"error": "input shard /in/k.parquet broke off after 2 rows"}'))
    tracker.add(meta(tmp_path, "end", 1, rows=2, total=2))  # a retried task's end marker changes nothing
    assert tracker.records == {} and tracker.missing() == []
    assert tracker.bad == {"k": "input shard /in/k.parquet broke off after 2 rows"}
    assert tracker.report.bad_shards == [{"shard": "/in/k.parquet", "error": tracker.bad["k"]}]
    assert tracker.report.to_dict()["shards"]["bad_skipped"] == 1
