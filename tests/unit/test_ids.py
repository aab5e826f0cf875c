"""Ids keep their type (ids.py): the run's id type settled from the input files and the output, rows judged
against it, and the writer's int64 / string id and chunk_id columns. No Ray, no model."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.config import InputConfig, LongDocsConfig
from embedrank.embed.prepare import PreviousShard, ShardState, prepare_rows
from embedrank.embed.stages import embedding_array, vectors_table
from embedrank.errors import PlanError
from embedrank.ids import (
    INT64,
    MIXED,
    STRING,
    column_id_type,
    file_id_type,
    id_array,
    row_id_problem,
    sampled_id_type,
    settle_id_type,
)
from embedrank.io.sources import RawRows, list_shards, peek


@pytest.mark.parametrize(
    "type_name, want",
    [
        ("int32", INT64),
        ("uint64", INT64),
        ("int64", INT64),
        ("string", STRING),
        ("large_string", STRING),
        ("dictionary<values=string, indices=int32, ordered=0>", STRING),
        ("double", None),
        ("null", None),
    ],
)
def test_column_types(type_name, want):
    assert column_id_type(type_name) == want


def test_input_files_tell_their_id_type(tmp_path):
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int32()), "text": ["a", "b"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["a", "b"]}), tmp_path / "b.parquet")
    lines = {
        "c.jsonl": [{"id": 1}, {"id": 2}, {"id": None}, {"id": 1.5}],  # bad ids are judged on their rows
        "d.jsonl": [{"id": "x"}, {"id": "y"}],
        "e.jsonl": [{"id": 1}, {"id": "y"}],
        "f.jsonl": [{"text": "no id"}],
    }
    for name, rows in lines.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = {s.uri.rsplit("/", 1)[-1]: file_id_type(peek(s), "id") for s in list_shards(str(tmp_path))}
    assert found == {
        "a.parquet": INT64,
        "b.parquet": STRING,
        "c.jsonl": INT64,
        "d.jsonl": STRING,
        "e.jsonl": MIXED,
        "f.jsonl": None,
    }
    assert sampled_id_type(frozenset({"bool", "float"})) is None  # true / 1.5 are bad ids, not integers


def test_a_new_output_takes_the_inputs_type():
    assert settle_id_type("auto", {"a": INT64, "b": INT64}, None, output_uri="o") == INT64
    assert settle_id_type("auto", {"a": STRING}, None, output_uri="o") == STRING
    assert settle_id_type("auto", {}, None, output_uri="o") == STRING
    assert settle_id_type("string", {"a": INT64}, None, output_uri="o") == STRING
    assert settle_id_type("string", {"a": INT64, "b": STRING, "c": MIXED}, None, output_uri="o") == STRING


def test_an_output_keeps_the_type_it_holds():
    assert settle_id_type("auto", {"a": INT64}, STRING, output_uri="o") == STRING  # made before int64 ids
    assert settle_id_type("auto", {}, INT64, output_uri="o") == INT64  # a rerun with nothing left to do
    with pytest.raises(PlanError, match=r"^output o holds int64 'id' values and input b has string ids"):
        settle_id_type("auto", {"a": INT64, "b": STRING}, INT64, output_uri="o")
    with pytest.raises(PlanError, match=r"^output o holds int64 'id' values and input e.jsonl has string ids"):
        settle_id_type("string", {"e.jsonl": MIXED}, INT64, output_uri="o")
    with pytest.raises(PlanError, match="output.id_type is string: one output holds one id type; write to a new"):
        settle_id_type("string", {"a": INT64}, INT64, output_uri="o")


def test_mixed_input_is_refused_in_one_line():
    with pytest.raises(PlanError) as caught:
        settle_id_type("auto", {"s3://b/x.parquet": INT64, "s3://b/y.parquet": STRING}, None, output_uri="o")
    assert "\n" not in str(caught.value)
    assert "integer column in s3://b/x.parquet and a string column in s3://b/y.parquet" in str(caught.value)
    assert "set output.id_type: string" in str(caught.value)
    with pytest.raises(PlanError, match=r"input e.jsonl holds both integer and string 'id' values in its first"):
        settle_id_type("auto", {"e.jsonl": MIXED}, None, output_uri="o")


def test_rows_are_judged_against_the_runs_type():
    assert row_id_problem(7, INT64) is None and row_id_problem(7, STRING) is None
    assert row_id_problem("7", INT64) == "wrong_id_type" and row_id_problem("7", STRING) is None
    assert row_id_problem(2**63, INT64) == "bad_id" and row_id_problem(2**63, STRING) is None
    assert row_id_problem(-(2**63), INT64) is None
    assert row_id_problem(True, INT64) == "bad_id" and row_id_problem(None, INT64) == "null_id"
    assert id_array(pa.array(["-5", "9223372036854775807"]), INT64).to_pylist() == [-5, 2**63 - 1]
    assert id_array(pa.array([3, 4]), STRING).to_pylist() == ["3", "4"]


def test_prepare_dead_letters_a_string_id_in_an_int64_run(tiny_embedding_dir):
    from embedrank.models.tokenization import EmbeddingTokenizer

    tokenizer = EmbeddingTokenizer.from_pretrained(tiny_embedding_dir, max_length=32)
    rows = [{"id": 1, "text": "one"}, {"id": "2", "text": "two"}, {"id": 2**64, "text": "big"}, {"id": 3, "text": "x"}]
    table = prepare_rows(
        RawRows(rows, list(range(4)), [None] * 4),
        shard_key="s",
        input_cfg=InputConfig(uri="x"),
        long_docs=LongDocsConfig(),
        max_length=32,
        tokenizer=tokenizer,
        state=ShardState(),
        id_type=INT64,
    )
    got = {r["_row"]: (r["id"], r["_reject"]) for r in table.to_pylist()}
    assert got == {0: ("1", None), 1: ("2", "wrong_id_type"), 2: (str(2**64), "bad_id"), 3: ("3", None)}


def test_previous_rows_of_an_int64_output_match_tonights_ids():
    previous = PreviousShard(pa.table({"id": pa.array([5, 6], pa.int64()), "content_hash": ["h5", "h6"]}))
    assert previous.hash_of("5") == "h5" and previous.hash_of("7") is None


def written(chunked: bool, id_type: str, chunk_id: bool = True) -> pa.Table:
    n = 3
    part = {
        "id": pa.array(["10", "10", "2"]),
        "embedding": embedding_array(np.ones((n, 4), np.float32), n, np.arange(n), "float32"),
        "n_tokens": pa.array([3] * n, pa.int32()),
        "truncated": pa.array([False] * n),
        "content_hash": pa.array(["h"] * n),
        "chunk_index": pa.array([0, 1, 0], pa.int32()),
        "chunk_start": pa.array([0, 5, 0], pa.int32()),
        "chunk_end": pa.array([6, 9, 4], pa.int32()),
    }
    return vectors_table(
        pa.table(part), chunked=chunked, passthrough=[], metadata={}, id_type=id_type, chunk_id=chunk_id
    )


def test_the_writer_gives_ids_the_runs_type_and_chunks_a_key():
    table = written(chunked=True, id_type=INT64)
    assert table.schema.field("id").type == pa.int64() and table.column("id").to_pylist() == [10, 10, 2]
    assert table.column("chunk_id").to_pylist() == ["10#0", "10#1", "2#0"]
    assert table.column_names[:2] == ["id", "embedding"]
    assert table.column_names[-4:] == ["chunk_id", "chunk_index", "chunk_start", "chunk_end"]
    assert written(chunked=True, id_type=STRING).schema.field("id").type == pa.string()
    assert "chunk_id" not in written(chunked=False, id_type=INT64).column_names
    # An output whose files were written without chunk_id keeps writing files like them.
    assert "chunk_id" not in written(chunked=True, id_type=STRING, chunk_id=False).column_names
