"""Prepare and write logic without Ray: templates, hashes, dead letters, coverage ranges, output arrays."""

import json

import numpy as np
import pyarrow as pa
import pytest

from embedrank.config import InputConfig, LongDocsConfig
from embedrank.embed.prepare import PreviousShard, ShardState, content_hash, end_of_shard, prepare_rows
from embedrank.embed.stages import embedding_array, write_embeddings
from embedrank.io.sources import RawRows
from embedrank.models.tokenization import EmbeddingTokenizer
from embedrank.runtime.staging import row_ranges


@pytest.fixture(scope="module")
def tokenizer(tiny_embedding_dir):
    return EmbeddingTokenizer.from_pretrained(tiny_embedding_dir, max_length=32)


def prepare_table(tokenizer, rows, state=None, **input_kwargs) -> pa.Table:
    raw = RawRows(rows, list(range(len(rows))), [None] * len(rows))
    return prepare_rows(
        raw,
        shard_key="s",
        input_cfg=InputConfig(uri="x", **input_kwargs),
        long_docs=LongDocsConfig(),
        max_length=32,
        tokenizer=tokenizer,
        state=state or ShardState(),
    )


def prepare(tokenizer, rows, **input_kwargs) -> list[dict]:
    return prepare_table(tokenizer, rows, **input_kwargs).to_pylist()


def test_template_over_several_columns(tokenizer):
    out = prepare(
        tokenizer,
        [{"id": 1, "title": "Title", "body": "Body"}, {"id": 2, "title": None, "body": None}],
        template="{title}\n{body}",
    )
    out = sorted(out, key=lambda r: r["_row"])
    assert out[0]["id"] == "1" and out[0]["_reject"] is None
    assert out[0]["content_hash"] == content_hash("Title\nBody")
    assert out[0]["token_ids"] == tokenizer.tokenize(["Title\nBody"]).ids[0].tolist()
    assert out[1]["_reject"] == "null_text"


def test_queries_are_hashed_with_their_instruction(tokenizer):
    doc = prepare(tokenizer, [{"id": "a", "text": "q"}])[0]
    query = prepare(tokenizer, [{"id": "a", "text": "q"}], kind="query", instruction="Find it")[0]
    assert query["content_hash"] == content_hash("Instruct: Find it\nQuery:q") != doc["content_hash"]


def test_every_row_once_with_sequence_numbers(tokenizer):
    rows = [
        {"id": "a", "text": "x"},
        {"id": "a", "text": "y"},
        {"id": "b", "text": " "},
        {"id": "c", "text": "z" * 500},
    ]
    out = prepare(tokenizer, rows)
    assert sorted(r["_seq"] for r in out) == [0, 1, 2, 3]
    assert {r["_row"]: r["_reject"] for r in out} == {0: None, 1: "duplicate_id", 2: "empty_text", 3: None}
    long = next(r for r in out if r["_row"] == 3)
    assert long["truncated"] and long["n_tokens"] == 32 and long["token_ids"][-1] == 151643


def test_row_ranges():
    assert row_ranges(np.array([5, 1, 2, 3, 7, 6])) == [[1, 4], [5, 8]]
    assert row_ranges(np.array([], dtype=np.int64)) == []


def test_embedding_array_float16_and_placement():
    vecs = np.arange(6, dtype=np.float32).reshape(2, 3)
    arr = embedding_array(vecs, 4, np.array([1, 3]), "float16")
    assert str(arr.type) == "fixed_size_list<item: halffloat>[3]"
    assert arr.to_pylist()[3] == [3.0, 4.0, 5.0] and arr.to_pylist()[0] == [0.0, 0.0, 0.0]


def test_write_staged_accounts_for_every_sequence_number(tmp_path, tokenizer):
    prepared = prepare_table(tokenizer, [{"id": "a", "text": "x"}, {"id": "b", "text": None}])
    table = pa.concat_tables([prepared, end_of_shard("s", 2, 2, [])]).drop_columns(["token_ids"])
    table = table.append_column("embedding", embedding_array(np.ones((1, 4), np.float32), 3, np.array([0]), "float32"))
    meta = write_embeddings(
        table, staging_uri=str(tmp_path), sources={"s": "file.jsonl"}, chunked=False, passthrough=[], metadata={}
    ).to_pylist()
    by_kind = {m["kind"]: m for m in meta}
    assert by_kind["end"]["shard_total"] == 2 and by_kind["end"]["rows"] == 2
    covered = sorted(r for m in meta for r in json.loads(m["ranges"]))
    assert covered == [[0, 1], [1, 2]]
    assert json.loads(by_kind["rejected"]["reasons"]) == {"null_text": 1}


def test_unchanged_documents_are_carried_with_their_vectors(tokenizer):
    previous = pa.table(
        {
            "id": ["same", "edited", "gone"],
            "content_hash": [content_hash("kept text"), content_hash("old"), "x"],
            "embedding": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]],
            "n_tokens": [3, 2, 2],
            "truncated": [False] * 3,
        }
    )
    state = ShardState(previous=PreviousShard(previous))
    out = prepare(
        tokenizer,
        [
            {"id": "same", "text": "kept text"},
            {"id": "edited", "text": "new"},
            {"id": "fresh", "text": "hello"},
            {"id": "bad", "text": ""},
        ],
        state=state,
    )
    by_id = {r["id"]: r for r in out}
    assert by_id["same"]["_change"] == "carried" and by_id["same"]["prev_embedding"] == [1.0, 0.0]
    assert by_id["same"]["token_ids"] == [] and by_id["same"]["n_tokens"] == 3
    assert by_id["edited"]["_change"] == "changed" and by_id["fresh"]["_change"] == "new"
    assert by_id["bad"]["_change"] is None and by_id["bad"]["_reject"] == "empty_text"
