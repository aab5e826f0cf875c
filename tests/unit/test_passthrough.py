"""Passthrough columns keep one type per output (embed/passthrough.py): settled from the output's files, the
Parquet footers or the JSON Lines first lines; a value its column cannot hold is a dead letter. No Ray."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.config import InputConfig, LongDocsConfig
from embedrank.embed.passthrough import column, sampled_type, settle_types, value_fits
from embedrank.embed.prepare import ShardState, end_of_shard, prepare_rows
from embedrank.errors import PlanError
from embedrank.io.sources import RawRows, list_shards, peek


def settle(folder, names, kept=None):
    shards = list_shards(str(folder))
    return settle_types(names, {s.key: peek(s) for s in shards}, {s.key: s.uri for s in shards}, kept)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "kinds, want",
    [
        ({"str"}, pa.string()),
        ({"int", "NoneType"}, pa.int64()),
        ({"int", "float"}, pa.float64()),
        ({"bool"}, pa.bool_()),
        ({"str", "int"}, pa.string()),
        ({"list"}, pa.string()),
        ({"dict", "list"}, pa.string()),
        ({"NoneType"}, None),
    ],
)
def test_json_lines_first_values_give_the_type(kinds, want):
    assert sampled_type(frozenset(kinds)) == want


def test_types_from_footers_and_first_lines(tmp_path):
    pq.write_table(
        pa.table({"id": ["a"], "year": pa.array([2020], pa.int32()), "lang": ["en"]}), tmp_path / "a.parquet"
    )
    pq.write_table(
        pa.table({"id": ["b"], "year": pa.array([2021], pa.int64()), "lang": pa.array(["de"]).dictionary_encode()}),
        tmp_path / "b.parquet",
    )
    write_jsonl(tmp_path / "c.jsonl", [{"id": "c", "year": 2022, "lang": "fr", "tags": ["x"], "score": 1}])
    write_jsonl(tmp_path / "d.jsonl", [{"id": "d", "tags": "y", "score": 0.5, "flag": None}])
    got = settle(tmp_path, ["year", "lang", "tags", "score", "flag"])
    assert got == {
        "year": pa.int64(),  # int32 and int64 files, and JSON integers
        "lang": pa.string(),  # a dictionary-encoded file beside a plain one
        "tags": pa.string(),  # a list in one file, a string in another: JSON text
        "score": pa.float64(),
        "flag": pa.string(),  # nothing but nulls: any value later becomes text
    }


def test_files_that_disagree_are_refused_in_one_line(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "year": [2020]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "year": ["twenty"]}), tmp_path / "b.parquet")
    with pytest.raises(PlanError) as caught:
        settle(tmp_path, ["year"])
    line = str(caught.value)
    assert "\n" not in line and "input.passthrough column 'year' is string in" in line
    assert "b.parquet" in line and "leave the column out of input.passthrough" in line
    (tmp_path / "b.parquet").unlink()
    write_jsonl(tmp_path / "c.jsonl", [{"id": "c", "year": "soon"}])
    with pytest.raises(PlanError, match=r"'year' is string in .*c.jsonl and int64 in .*a.parquet"):
        settle(tmp_path, ["year"])


def test_an_output_keeps_the_types_of_its_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": "a", "year": 2020, "note": 7}])
    kept = pa.schema([("id", pa.string()), ("year", pa.float64()), ("note", pa.string())])
    assert settle(tmp_path, ["year", "note"], kept) == {"year": pa.float64(), "note": pa.string()}
    with pytest.raises(PlanError, match=r"'year' is int64 in .*a.jsonl and bool in the output's files"):
        settle(tmp_path, ["year"], pa.schema([("year", pa.bool_())]))


def test_values_and_columns():
    assert value_fits(5, pa.int64()) and not value_fits("5", pa.int64()) and not value_fits(True, pa.int64())
    assert value_fits(5, pa.float64()) and value_fits(None, pa.bool_()) and value_fits([1], pa.string())
    assert not value_fits(2**63, pa.int64())
    assert column(["en", 5, ["a"], {"k": "é"}, None], pa.string()).to_pylist() == [
        "en",
        "5",
        '["a"]',
        '{"k": "é"}',
        None,
    ]
    assert column([None, None], pa.int64()).type == pa.int64()  # a batch of nulls keeps the column's type
    assert column([1, 2.5], pa.float64()).to_pylist() == [1.0, 2.5]


def test_a_column_of_nulls_says_nothing(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "year": pa.array([None], pa.null())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "year": [2021]}), tmp_path / "b.parquet")
    assert settle(tmp_path, ["year"], pa.schema([("year", pa.null())])) == {"year": pa.int64()}


def test_prepare_dead_letters_a_value_its_column_cannot_hold(tiny_embedding_dir):
    from embedrank.models.tokenization import EmbeddingTokenizer

    tokenizer = EmbeddingTokenizer.from_pretrained(tiny_embedding_dir, max_length=32)
    rows = [
        {"id": "a", "text": "one", "year": 2020},
        {"id": "b", "text": "two", "year": "soon"},
        {"id": "c", "text": "x"},
    ]
    types = {"year": pa.int64()}
    table = prepare_rows(
        RawRows(rows, [0, 1, 2], [None] * 3),
        shard_key="s",
        input_cfg=InputConfig(uri="x", passthrough=["year"]),
        long_docs=LongDocsConfig(),
        max_length=32,
        tokenizer=tokenizer,
        state=ShardState(),
        passthrough_types=types,
    )
    got = {r["id"]: (r["_reject"], r["pass.year"]) for r in table.to_pylist()}
    assert got == {"a": (None, 2020), "b": ("wrong_passthrough_type", None), "c": (None, None)}
    assert table.schema.field("pass.year").type == pa.int64()
    marker = end_of_shard("s", 3, 3, ["year"], passthrough_types=types)
    assert marker.schema.field("pass.year").type == pa.int64()
