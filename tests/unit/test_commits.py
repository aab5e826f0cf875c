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


def test_dead_letters_commit_under_an_underscore_folder_with_no_parquet_suffix(tmp_path, tracker):
    """The only `*.parquet` files of a committed output are its data files: a reader of the root (a `**/*.parquet`
    glob, or a folder reader that skips `_` folders) never meets a dead letter."""
    tracker.add(meta(tmp_path, "end", 0, rows=3, total=3))
    tracker.add(meta(tmp_path, "end", 1, rows=0, total=0))
    tracker.add(meta(tmp_path, "data", 0, [(0, 2)], rows=2))
    tracker.add(meta(tmp_path, "rejected", 0, [(2, 3)], rows=1))
    files = tracker.records["k"]["files"]
    assert files == {"data": ["vectors/k/part-00000.parquet"], "rejected": ["_rejected/k/part-00000.pq"]}
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")) == files["data"]


def old_output(tmp_path):
    """A committed output as earlier versions wrote it: dead letters at rejected/<shard>/part-*.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = OutputStore(str(tmp_path / "old"))
    records = {}
    for key in ("a", "b"):
        (tmp_path / "old" / "vectors" / key).mkdir(parents=True)
        pq.write_table(
            pa.table({"id": [f"{key}1"], "embedding": [[1.0, 0.0]]}), store.path("vectors", key, "part-00000.parquet")
        )
        rejected = []
        for i in range(2 if key == "a" else 0):
            (tmp_path / "old" / "rejected" / key).mkdir(parents=True, exist_ok=True)
            table = pa.table({"id": [f"{key}-bad{i}"], "source": ["/in"], "row": [i], "reason": ["bad_id"]})
            pq.write_table(table, store.path("rejected", key, f"part-{i:05d}.parquet"))
            rejected.append(f"rejected/{key}/part-{i:05d}.parquet")
        records[key] = {
            "shard": {"key": key},
            "files": {"data": [f"vectors/{key}/part-00000.parquet"], "rejected": rejected},
            "rows": {"read": 1 + len(rejected), "embedded": 1, "rejected": len(rejected)},
        }
        store.write_json(store.path("_embedrank/commits", f"{key}.json"), records[key])
    return store, records


def test_an_older_output_keeps_working_and_its_dead_letters_move_out_of_the_root_on_the_next_run(tmp_path):
    import json

    import pyarrow.dataset as ds

    from embedrank.runtime.commits import publish
    from embedrank.runtime.store import committed_files

    store, records = old_output(tmp_path)
    store.write_json(store.path("_embedrank/manifest.json"), {})
    # Before any new run: embedrank still reads it, dead letters included.
    assert [f.rsplit("/", 2)[-2] for f in committed_files(store.uri, kind="rejected")] == ["a", "a"]
    publish(store, records, {"model": "m"}, RunReport(output=store.uri, model="m"))
    moved = ["_rejected/a/part-00000.pq", "_rejected/a/part-00001.pq"]
    assert records["a"]["files"]["rejected"] == moved and records["b"]["files"]["rejected"] == []
    assert store.read_commits()["a"]["files"]["rejected"] == moved
    assert json.loads(open(store.path("_embedrank/manifest.json")).read())["rejected_files"] == moved
    assert not (tmp_path / "old" / "rejected").exists()
    dead = ds.dataset(store.path("_rejected"), format="parquet").to_table()
    assert sorted(dead.column("id").to_pylist()) == ["a-bad0", "a-bad1"]
    root = ds.dataset(store.uri, format="parquet").to_table()  # the root: the vectors, nothing else
    assert sorted(root.column("id").to_pylist()) == ["a1", "b1"] and "embedding" in root.column_names


def test_a_move_stopped_midway_is_finished_by_the_next_run(tmp_path):
    from embedrank.runtime.commits import publish

    store, records = old_output(tmp_path)
    # Stopped after shard a's files were copied and its record rewritten, before the old folder went.
    store.move_old_rejected({"a": records["a"]})
    (tmp_path / "old" / "rejected" / "a").mkdir(parents=True)
    (tmp_path / "old" / "rejected" / "a" / "part-00000.parquet").write_bytes(b"left behind")
    records = store.read_commits()
    publish(store, records, {"model": "m"}, RunReport(output=store.uri, model="m"))
    assert not (tmp_path / "old" / "rejected").exists()
    assert store.read_commits()["a"]["files"]["rejected"] == ["_rejected/a/part-00000.pq", "_rejected/a/part-00001.pq"]


def test_recommitting_a_shard_of_an_older_output_clears_its_old_dead_letters(tmp_path):
    store, records = old_output(tmp_path)
    staged = tmp_path / "staged.parquet"
    staged.write_bytes(b"x")
    store.commit_shard("a", {"data": [str(staged)], "rejected": []}, {"shard": {"key": "a"}})
    assert not (tmp_path / "old" / "rejected" / "a").exists()
    store.remove_shard("b")
    assert not (tmp_path / "old" / "vectors" / "b").exists()


@pytest.mark.parametrize("data_folder", ["vectors", "scores", "candidates"])
def test_every_job_output_root_reads_as_its_committed_rows(tmp_path, data_folder):
    """embed (vectors/), rerank (scores/), retrieve (candidates/), and each nightly version (an embed output): the
    root read by pyarrow, pandas, polars and DuckDB (Ray Data: tests/integration/test_terminal.py) holds the
    committed rows only, with dead letters and bookkeeping beside them."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    store = OutputStore(str(tmp_path / "out"), data_folder=data_folder)
    for key in ("a", "b"):
        data, dead = tmp_path / f"{key}-data.staged", tmp_path / f"{key}-dead.staged"
        pq.write_table(pa.table({"query_id": [f"{key}1", f"{key}2"], "score": [0.5, 0.25]}), data)
        pq.write_table(pa.table({"query_id": [f"{key}x"], "source": ["/in"], "row": [3], "reason": ["bad_id"]}), dead)
        store.commit_shard(key, {"data": [str(data)], "rejected": [str(dead)]}, {"shard": {"key": key}})
    store.write_json(store.path("_embedrank/manifest.json"), {})
    root, want = store.uri, ["a1", "a2", "b1", "b2"]
    assert sorted(ds.dataset(root, format="parquet").to_table().column("query_id").to_pylist()) == want
    assert sorted(pd.read_parquet(root)["query_id"]) == want
    assert sorted(pl.read_parquet(f"{root}/**/*.parquet")["query_id"]) == want
    assert sorted(pl.scan_parquet(f"{root}/**/*.parquet").collect()["query_id"]) == want
    rows = duckdb.sql(f"select query_id from read_parquet('{root}/**/*.parquet') order by 1").fetchall()
    assert [r[0] for r in rows] == want
    with pytest.raises(Exception, match="extension"):  # polars on the bare folder: its JSON files too, refused
        pl.read_parquet(root)
    assert sorted(pd.read_parquet(store.path("_rejected"))["query_id"]) == ["ax", "bx"]
