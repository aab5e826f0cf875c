"""Work units smaller than a file and bigger than a tiny one: every row exactly once, one commit per file."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import run_job
from .reliability import check_exactly_once


def parquet_bytes(rows: list[dict], row_group_size: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=row_group_size)
    return buf.getvalue()


def jsonl_bytes(rows: list) -> bytes:
    """JSON Lines with what real files hold: a byte order mark, CRLF line ends, blank lines, a broken line."""
    lines = [json.dumps(r) if isinstance(r, dict) else r for r in rows]
    return (
        b"\xef\xbb\xbf"
        + "".join(
            line + ("\r\n" if i % 2 else "\n") + ("\n" if i % 97 == 5 else "") for i, line in enumerate(lines)
        ).encode()
    )


def test_big_files_are_cut_into_pieces_and_commit_once(s3, job_config, job_embedder):
    """A Parquet file (cut by row ranges) and an uncompressed JSON Lines file (cut by byte ranges) in one run."""
    rows = [{"id": f"p{i:05d}", "text": f"piece row {i} " + "word " * (i % 23)} for i in range(1500)]
    # The same id in two pieces (rows 10 and 1400) and twice within one piece: each later copy is dead-lettered.
    rows[1400] = {"id": "p00010", "text": "a later copy in another piece"}
    rows[12] = {"id": "p00011", "text": "a later copy in the same piece"}
    # Row groups of 400 rows, pieces of 350: pieces start and end inside row groups.
    s3.pipe_file("corpus/pieces/big.parquet", parquet_bytes(rows, 400))
    lines: list = [{"id": f"j{i:05d}", "text": f"line {i} " + "word " * (i % 31)} for i in range(1500)]
    lines[1200] = '{"id": "j-broken", "text": '  # a bad line far from the first piece
    lines[1300] = {"id": "j01290", "text": "a later copy in the same piece"}
    s3.pipe_file("corpus/pieces/big.jsonl", jsonl_bytes(lines))
    config = job_config("s3://corpus/pieces/", "s3://corpus/out-pieces/", prepare={"rows_per_task": 350})
    proc = run_job(config, "--dry-run")
    assert proc.returncode == 0 and "(2 files cut into pieces)" in proc.stdout, proc.stdout + proc.stderr
    proc = run_job(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    valid = {r["id"]: r["text"] for r in reversed(rows)}  # the first copy of an id wins
    valid.update({r["id"]: r["text"] for r in reversed(lines) if isinstance(r, dict)})
    stats = check_exactly_once(
        s3,
        "corpus/out-pieces",
        valid=valid,
        rejected=[
            ("p00010", "duplicate_id"),
            ("p00011", "duplicate_id"),
            (None, "bad_json"),
            ("j01290", "duplicate_id"),
        ],
        embedder=job_embedder,
    )
    assert stats["rows_out"] == 1498 + 1498
    commits = {
        p.rsplit("/", 1)[-1].split("-")[0]: json.loads(s3.cat_file(p))
        for p in s3.ls("corpus/out-pieces/_embedrank/commits")
    }
    assert sorted(commits) == ["big.jsonl", "big.parquet"]
    assert commits["big.parquet"]["rows"]["read"] == commits["big.jsonl"]["rows"]["read"] == 1500
    assert len(set(commits["big.jsonl"]["data_pieces"])) == 5  # read by several tasks, cut by bytes
    report = json.loads(s3.cat_file("corpus/out-pieces/_embedrank/report.json"))
    assert report["rows"]["read"] == 3000 and report["shards"]["committed"] == 2
    manifest = json.loads(s3.cat_file("corpus/out-pieces/_embedrank/manifest.json"))
    dead = pa.concat_tables(
        [pq.read_table(io.BytesIO(s3.cat_file(f"corpus/out-pieces/{f}"))) for f in manifest["rejected_files"]]
    )
    rows_of = {(r["source"].rsplit("/", 1)[-1], r["reason"], r["id"]): r["row"] for r in dead.to_pylist()}
    # Row numbers are the file's (blank lines are not rows), not the piece's.
    assert rows_of[("big.parquet", "duplicate_id", "p00011")] == 12
    assert rows_of[("big.jsonl", "bad_json", None)] == 1200
    assert rows_of[("big.jsonl", "duplicate_id", "j01290")] == 1300


@pytest.mark.slow  # the grouping itself is unit-tested (tests/unit/test_pieces.py); big files stay in CI
def test_many_tiny_files_share_tasks(s3, job_config, job_embedder):
    valid = {}
    for f in range(60):
        lines = [{"id": f"t{f}-{i}", "text": f"tiny file {f} row {i}"} for i in range(3)]
        valid.update({r["id"]: r["text"] for r in lines})
        s3.pipe_file(f"corpus/tiny/f{f:03d}.jsonl", "".join(json.dumps(r) + "\n" for r in lines).encode())
    config = job_config("s3://corpus/tiny/", "s3://corpus/out-tiny/", prepare={"rows_per_task": 50})
    proc = run_job(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_exactly_once(s3, "corpus/out-tiny", valid=valid, rejected={}, embedder=job_embedder)
    assert len(s3.ls("corpus/out-tiny/_embedrank/commits")) == 60
