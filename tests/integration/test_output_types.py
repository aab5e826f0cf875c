"""One type per output column across files and runs. Ids: a new output takes the input's (int64 from a Parquet
integer column), an output keeps the type it holds when more input arrives, and string input into an int64
output is refused in planning, in one line, with nothing written. Passthrough columns: one type in every file,
a batch of nulls included, and a JSON Lines value its column cannot hold is a dead letter. Real CLI runs on
local paths."""

import json

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from .conftest import run_job


def ids_of(output) -> pa.ChunkedArray:
    """The committed ids of an output, read as one dataset (every file must share the id type)."""
    return ds.dataset(str(output / "vectors"), format="parquet").to_table(columns=["id"]).column("id")


@pytest.mark.slow
def test_an_output_keeps_its_id_type_and_refuses_the_other(tmp_path, job_config):
    docs = tmp_path / "in"
    docs.mkdir()
    pq.write_table(
        pa.table({"id": pa.array(range(10), pa.int32()), "text": [f"document {i}" for i in range(10)]}),
        docs / "a.parquet",
    )

    # A new output: the integer column is written as int64.
    fresh = tmp_path / "fresh"
    proc = run_job(job_config(str(docs), str(fresh)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ids_of(fresh).type == pa.int64() and sorted(ids_of(fresh).to_pylist()) == list(range(10))

    # An output written with string ids keeps them when integer input arrives later (auto).
    text = tmp_path / "text"
    assert run_job(job_config(str(docs), str(text), output={"id_type": "string"})).returncode == 0
    (docs / "b.jsonl").write_text("".join(json.dumps({"id": i, "text": f"document {i}"}) + "\n" for i in (10, 11)))
    proc = run_job(job_config(str(docs), str(text)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ids_of(text).type == pa.string() and sorted(ids_of(text).to_pylist(), key=int) == [str(i) for i in range(12)]

    # String ids arriving at the int64 output: refused in planning, one line, the output as it was.
    (docs / "c.jsonl").write_text(json.dumps({"id": "doc-x", "text": "a document with a string id"}) + "\n")
    before = sorted(p.name for p in (fresh / "vectors").rglob("*"))
    proc = run_job(job_config(str(docs), str(fresh)))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert f"output {fresh} holds int64 'id' values and input {docs / 'c.jsonl'} has string ids" in proc.stderr
    assert sorted(p.name for p in (fresh / "vectors").rglob("*")) == before


@pytest.mark.slow
def test_passthrough_columns_have_one_type_in_every_file(tmp_path, job_config):
    docs = tmp_path / "in"
    docs.mkdir()
    # A Parquet file whose first 300 `year` values are null (its first batches), then int32 values.
    years = [None] * 300 + list(range(1900, 2000))
    pq.write_table(
        pa.table(
            {
                "id": [f"p{i}" for i in range(400)],
                "text": [f"parquet document {i}" for i in range(400)],
                "year": pa.array(years, pa.int32()),
            }
        ),
        docs / "a.parquet",
    )
    # JSON Lines with integer years in its first lines; row 140 says "soon".
    rows = [{"id": f"j{i}", "text": f"json document {i}", "year": 2000 + i} for i in range(150)]
    rows[140]["year"] = "soon"
    (docs / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    proc = run_job(job_config(str(docs), str(out), input={"passthrough": ["year"]}, prepare={"batch_size": 100}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted((out / "vectors").rglob("*.parquet"))
    assert len(files) >= 2 and {pq.read_schema(f).field("year").type for f in files} == {pa.int64()}
    table = pl.read_parquet(str(out / "vectors" / "**" / "*.parquet"))
    assert table.height == 549 and table.schema["year"] == pl.Int64
    assert sorted(table.filter(pl.col("year").is_not_null())["year"].to_list()) == sorted(
        list(range(1900, 2000)) + [2000 + i for i in range(150) if i != 140]
    )
    dead = ds.dataset(str(out / "_rejected"), format="parquet").to_table().to_pylist()
    assert [(r["id"], r["reason"]) for r in dead] == [("j140", "wrong_passthrough_type")]
