"""Types are judged per row, never per file: a hostile JSON Lines row is one dead letter wherever it stands.

Planning reads a JSON Lines file's first lines for its column names only (a JSON Lines file has no column
types); reading and prepare judge each value on its own row. No Ray here: the reader, the plan-time column
check, embed's prepare and rerank's pairs, called directly.
"""

import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.config import CorpusConfig, InputConfig, LongDocsConfig, RerankInputConfig, load_config
from embedrank.embed.job import check_shard_columns
from embedrank.embed.prepare import ShardState, prepare_rows
from embedrank.errors import PlanError
from embedrank.io.sources import UNTYPED, iter_rows, list_shards, peek
from embedrank.rerank.pairs import corpus_rows, explode_pairs

from .test_input_boundaries import Tok

GOOD = [{"id": f"g{i}", "text": f"good row {i}"} for i in range(6)]
# One row per kind of hostile value, with the dead letter each must become: (row, (shown id, reason)).
HOSTILE = [
    ({"id": 1.5, "text": "float id"}, ("1.5", "bad_id")),
    ({"id": True, "text": "bool id"}, ("true", "bad_id")),
    ({"id": [1], "text": "list id"}, ("[1]", "bad_id")),
    ({"id": {"k": 1}, "text": "object id"}, ('{"k": 1}', "bad_id")),
    ({"id": "t-num", "text": 5}, ("t-num", "not_text")),
    ({"id": "t-list", "text": ["a"]}, ("t-list", "not_text")),
    ({"id": "t-obj", "text": {"a": "b"}}, ("t-obj", "not_text")),
]


def placed(hostile: dict, position: str) -> list[dict]:
    """The good rows with `hostile` on the first line, the second line or the last line."""
    at = {"first": 0, "second": 1, "last": len(GOOD)}[position]
    return GOOD[:at] + [hostile] + GOOD[at:]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def embed_outcome(path) -> tuple[list, list]:
    """(ids embedded, (shown id, reason) of each dead letter) of one JSON Lines file, through the plan-time
    column check, the reader and prepare."""
    (shard,) = list_shards(str(path))
    cfg = load_config(None, [f"input.uri={path}", "output.uri=unused"])
    check_shard_columns(shard, peek(shard).columns, cfg)
    state, good, dead = ShardState(), [], []
    for raw in iter_rows(shard, 3):
        table = prepare_rows(
            raw,
            shard_key=shard.key,
            input_cfg=InputConfig(uri="x"),
            long_docs=LongDocsConfig(),
            max_length=16,
            tokenizer=Tok(),
            state=state,
        )
        for row in table.to_pylist():
            (good if row["_reject"] is None else dead).append(row["id"] if row["_reject"] is None else row)
    return sorted(good), sorted((row["id"], row["_reject"]) for row in dead)


@pytest.mark.parametrize("hostile,dead_letter", HOSTILE, ids=[h[1][1] + ":" + h[1][0] for h in HOSTILE])
def test_a_hostile_row_is_one_dead_letter_on_the_first_second_or_last_line(tmp_path, hostile, dead_letter):
    outcomes = {}
    for position in ("first", "second", "last"):
        path = tmp_path / f"{position}.jsonl"
        write_jsonl(path, placed(hostile, position))
        outcomes[position] = embed_outcome(path)
    want = (sorted(r["id"] for r in GOOD), [dead_letter])
    assert outcomes == {"first": want, "second": want, "last": want}


def test_planning_reads_json_lines_column_names_not_types(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"id": 1.5, "text": 5, "extra": None}, *GOOD])
    (shard,) = list_shards(str(path))
    assert peek(shard).columns == {"id": UNTYPED, "text": UNTYPED, "extra": UNTYPED}
    # A file of nothing but hostile rows plans too: its rows are dead letters, the other files run.
    write_jsonl(path, [h for h, _ in HOSTILE])
    (shard,) = list_shards(str(path))
    check_shard_columns(shard, peek(shard).columns, load_config(None, [f"input.uri={path}", "output.uri=unused"]))


def test_a_parquet_column_type_holds_for_every_row_and_is_still_checked_in_planning(tmp_path):
    # The footer's type is every row's: a float id column is a column mistake, named before any work.
    path = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"id": [1.5, 2.5], "text": ["a", "b"]}), path)
    (shard,) = list_shards(str(path))
    with pytest.raises(PlanError, match="ids must be strings or integers"):
        check_shard_columns(shard, peek(shard).columns, load_config(None, [f"input.uri={path}", "output.uri=y"]))


def test_a_template_field_that_is_not_text_is_not_text_on_its_row():
    rows = [{"id": "a", "title": "T", "body": "B"}, {"id": "b", "title": 7, "body": "B"}, {"id": "c", "title": "T"}]
    raw = type("Raw", (), {"rows": rows, "row_numbers": [0, 1, 2], "problems": [None] * 3})
    table = prepare_rows(
        raw,
        shard_key="k",
        input_cfg=InputConfig(uri="x", template="{title}: {body}"),
        long_docs=LongDocsConfig(),
        max_length=16,
        tokenizer=Tok(),
        state=ShardState(),
    )
    assert dict(zip(table.column("id").to_pylist(), table.column("_reject").to_pylist())) == {
        "a": None,
        "b": "not_text",
        "c": None,  # a missing field renders empty, as before
    }


def pairs_outcome(path, has_corpus=False) -> list:
    (shard,) = list_shards(str(path))
    out = []
    seq = itertools.count()
    seen: set = set()
    for raw in iter_rows(shard, 2):
        table = explode_pairs(
            raw, shard_key=shard.key, input_cfg=RerankInputConfig(uri="x"), seen=seen, seq=seq, has_corpus=has_corpus
        )
        out += [(r["query_id"], r["doc_id"], r["_reject"]) for r in table.to_pylist()]
    return sorted(out, key=repr)


@pytest.mark.parametrize(
    "hostile,reason",
    [
        ({"query_id": 1.5, "query": "q", "doc_id": "d", "document": "t"}, "bad_id"),
        ({"query_id": "q9", "query": "q", "doc_id": [2], "document": "t"}, "bad_id"),
        ({"query_id": "q9", "query": 5, "doc_id": "d", "document": "t"}, "empty_query"),
        ({"query_id": "q9", "query": "q", "doc_id": "d", "document": {"a": 1}}, "not_text"),
        ({"query_id": "q9", "query": "q", "doc_id": "d", "document": "t", "instruction": 3}, "bad_instruction"),
    ],
)
def test_rerank_pairs_judge_each_row_wherever_it_stands(tmp_path, hostile, reason):
    good = [{"query_id": f"q{i}", "query": "what", "doc_id": f"d{i}", "document": "text"} for i in range(4)]
    outcomes = []
    for at in (0, 1, len(good)):
        path = tmp_path / f"at{at}.jsonl"
        write_jsonl(path, good[:at] + [hostile] + good[at:])
        outcomes.append(pairs_outcome(path))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert sorted(r for _, _, r in outcomes[0] if r) == [reason]
    assert sum(r is None for _, _, r in outcomes[0]) == len(good)


def test_corpus_rows_without_a_usable_id_are_skipped(tmp_path):
    path = tmp_path / "corpus.jsonl"
    write_jsonl(path, [{"id": 1.5, "text": "a"}, {"id": "d1", "text": 5}, {"id": 7, "text": "seven"}, {"id": None}])
    (shard,) = list_shards(str(path))
    (raw,) = iter_rows(shard, 10)
    table = corpus_rows(raw, CorpusConfig(uri="x"))
    assert table.to_pydict() == {"doc_id": ["d1", "7"], "_corpus_text": [None, "seven"]}
