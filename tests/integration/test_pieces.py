"""Work units smaller than a file and bigger than a tiny one: every row exactly once, one commit per file."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from .conftest import run_job
from .reliability import check_exactly_once


def parquet_bytes(rows: list[dict], row_group_size: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=row_group_size)
    return buf.getvalue()


def test_a_big_file_is_cut_into_pieces_and_commits_once(s3, job_config, job_embedder):
    rows = [{"id": f"p{i:05d}", "text": f"piece row {i} " + "word " * (i % 23)} for i in range(1500)]
    # The same id in two pieces (rows 10 and 1400) and twice within one piece: each later copy is dead-lettered.
    rows[1400] = {"id": "p00010", "text": "a later copy in another piece"}
    rows[12] = {"id": "p00011", "text": "a later copy in the same piece"}
    # Row groups of 400 rows, pieces of 350: pieces start and end inside row groups.
    s3.pipe_file("corpus/pieces/big.parquet", parquet_bytes(rows, 400))
    config = job_config("s3://corpus/pieces/", "s3://corpus/out-pieces/", prepare={"rows_per_task": 350})
    proc = run_job(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    valid = {r["id"]: r["text"] for r in reversed(rows)}  # the first copy of an id wins
    stats = check_exactly_once(s3, "corpus/out-pieces", valid=valid,
                               rejected=[("p00010", "duplicate_id"), ("p00011", "duplicate_id")],
                               embedder=job_embedder)
    assert stats["rows_out"] == 1498
    commits = s3.ls("corpus/out-pieces/_embedrank/commits")
    assert len(commits) == 1
    record = json.loads(s3.cat_file(commits[0]))
    assert record["rows"]["read"] == 1500
    report = json.loads(s3.cat_file("corpus/out-pieces/_embedrank/report.json"))
    assert report["rows"]["read"] == 1500 and report["shards"]["committed"] == 1
    dead = pq.read_table(io.BytesIO(s3.cat_file(
        "corpus/out-pieces/" + json.loads(s3.cat_file("corpus/out-pieces/_embedrank/manifest.json"))["rejected_files"][0])))
    assert 12 in dead.column("row").to_pylist()  # row numbers are the file's, not the piece's


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

