"""Rerank's id types (rerank/id_types.py, pairs.py, ranking.py): query_id and doc_id settled in planning from the
input files, string ids in an int64 run dead-lettered as wrong_id_type, scores ranked in the run's types."""

import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.config import RerankInputConfig, RerankJobConfig, load_config
from embedrank.errors import PlanError
from embedrank.ids import item_id_type
from embedrank.io.sources import SAMPLE_LINES, iter_rows, list_shards, peek_all
from embedrank.rerank.id_types import settle_score_ids
from embedrank.rerank.pairs import explode_pairs
from embedrank.rerank.ranking import rank_scores, typed_scores


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def lists(qids, dids) -> list[dict]:
    return [{"query_id": q, "query": "what", "candidates": [{"doc_id": d, "text": None} for d in dids]} for q in qids]


def pairs(qids, dids) -> list[dict]:
    return [{"query_id": q, "query": "what", "doc_id": d, "document": "text"} for q in qids for d in dids]


def settle(tmp_path, files: list[str], *overrides, kept: pa.Schema | None = None) -> dict:
    cfg = load_config(None, [f"input.uri={files}", f"output.uri={tmp_path / 'out'}", *overrides], cls=RerankJobConfig)
    shards = list_shards(files)
    infos, _ = peek_all(shards)
    return settle_score_ids(cfg, shards, infos, kept)


def test_the_doc_id_type_of_candidate_items():
    struct = pa.struct([("text", pa.string()), ("doc_id", pa.int32())])
    assert item_id_type(pa.list_(struct)) == "int64"
    assert item_id_type(pa.large_list(pa.struct([("doc_id", pa.dictionary(pa.int32(), pa.string()))]))) == "string"
    assert item_id_type(pa.list_(pa.struct([("my_doc_id", pa.int64())]))) is None
    assert item_id_type(pa.list_(pa.string())) is None and item_id_type(pa.string()) is None


def test_each_id_column_takes_the_type_of_its_input(tmp_path):
    # Candidate lists: the query ids of the column, the doc ids of the candidates (Parquet: the struct's field;
    # JSON Lines: the candidates of the first lines).
    parquet = write_parquet(tmp_path / "a.parquet", lists(["q1", "q2"], [3, 10]))
    jsonl = write_jsonl(tmp_path / "b.jsonl", lists(["q3"], [4, 5]))
    assert settle(tmp_path, [parquet, jsonl]) == {"query_id": "string", "doc_id": "int64"}
    assert settle(tmp_path, [parquet], "output.id_type=string") == {"query_id": "string", "doc_id": "string"}
    # Flat pairs: their own columns, read from the first lines.
    flat = write_jsonl(tmp_path / "c.jsonl", pairs([7, 8], ["d1", "d2"]))
    assert settle(tmp_path, [flat]) == {"query_id": "int64", "doc_id": "string"}


def test_inputs_that_disagree_are_refused_with_one_line(tmp_path):
    ints = write_parquet(tmp_path / "ints.parquet", lists(["q1"], [3, 10]))
    text = write_jsonl(tmp_path / "text.jsonl", lists(["q2"], ["d3"]))
    with pytest.raises(PlanError) as refused:
        settle(tmp_path, [ints, text])
    message = str(refused.value)
    assert "\n" not in message
    assert f"'candidates.doc_id' is an integer column in {ints} and a string column in {text}" in message
    assert "set output.id_type: string to write every id as text" in message
    assert settle(tmp_path, [ints, text], "output.id_type=string")["doc_id"] == "string"
    both = write_jsonl(tmp_path / "both.jsonl", pairs(["q1"], ["d1", 2]))  # one file, both kinds in its first lines
    with pytest.raises(PlanError, match="holds both integer and string 'doc_id' values in its first lines"):
        settle(tmp_path, [both])


def test_an_output_keeps_the_types_of_its_scores(tmp_path):
    ints = pa.schema([("query_id", pa.int64()), ("doc_id", pa.int64()), ("score", pa.float32())])
    text = write_jsonl(tmp_path / "text.jsonl", pairs(["q1"], ["d1"]))
    with pytest.raises(PlanError, match=r"holds int64 'query_id' values and input .*text.jsonl has string"):
        settle(tmp_path, [text], kept=ints)
    numbers = write_jsonl(tmp_path / "numbers.jsonl", pairs([1], [2]))
    with pytest.raises(PlanError, match="int64 'query_id' values and output.id_type is string: .* new output.uri"):
        settle(tmp_path, [numbers], "output.id_type=string", kept=ints)
    assert settle(tmp_path, [numbers], kept=ints) == {"query_id": "int64", "doc_id": "int64"}
    strings = pa.schema([("query_id", pa.string()), ("doc_id", pa.string())])
    assert settle(tmp_path, [numbers], kept=strings) == {"query_id": "string", "doc_id": "string"}


def test_a_string_id_in_an_int64_run_is_a_dead_letter(tmp_path):
    """The first lines decide int64; a later string id (or an integer outside int64) is dead-lettered, never
    cast, and every other pair keeps its id (as text inside the run)."""
    rows = pairs(range(SAMPLE_LINES + 5), [1])
    rows[SAMPLE_LINES + 1]["doc_id"] = "17"
    rows[SAMPLE_LINES + 2]["query_id"] = "q"
    rows[SAMPLE_LINES + 3]["doc_id"] = 2**63
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    types = settle(tmp_path, [path])
    assert types == {"query_id": "int64", "doc_id": "int64"}
    (shard,) = list_shards(path)
    seq, seen = itertools.count(), set()
    out = []
    for raw in iter_rows(shard, 40):
        table = explode_pairs(
            raw, shard_key=shard.key, input_cfg=RerankInputConfig(uri="x"), seen=seen, seq=seq, has_corpus=False
        )
        typed = explode_pairs(
            raw,
            shard_key=shard.key,
            input_cfg=RerankInputConfig(uri="x"),
            seen=set(),
            seq=itertools.count(),
            has_corpus=False,
            id_types=types,
        )
        assert table.column("query_id").to_pylist() == typed.column("query_id").to_pylist()  # text inside the run
        out += [(r["query_id"], r["doc_id"], r["_reject"]) for r in typed.to_pylist()]
    dead = [r for r in out if r[2]]
    assert dead == [
        (str(SAMPLE_LINES + 1), "17", "wrong_id_type"),
        ("q", "1", "wrong_id_type"),
        (str(SAMPLE_LINES + 3), str(2**63), "bad_id"),
    ]
    assert len(out) == len(rows)


def test_scores_are_ranked_in_the_run_types():
    """Staged text ids become int64 before ranking: equal scores go to the numerically smaller doc_id."""
    staged = pa.table(
        {
            "query_id": ["5", "5", "5", "40"],
            "doc_id": ["100", "9", "10", "7"],
            "score": pa.array([0.5, 0.5, 0.5, 0.1], pa.float32()),
            "n_tokens": pa.array([3, 3, 3, 3], pa.int32()),
            "truncated": [False] * 4,
        }
    )
    ranked, dropped = rank_scores(typed_scores(staged, {"query_id": "int64", "doc_id": "int64"}), 2)
    assert ranked.schema.field("query_id").type == pa.int64() == ranked.schema.field("doc_id").type
    assert [(r["query_id"], r["doc_id"], r["rank"]) for r in ranked.to_pylist()] == [(5, 9, 1), (5, 10, 2), (40, 7, 1)]
    assert dropped == 1
    text, _ = rank_scores(typed_scores(staged, {"query_id": "string", "doc_id": "string"}), 2)
    assert [r["doc_id"] for r in text.to_pylist()] == ["7", "10", "100"]  # "40" < "5": query 40 first
