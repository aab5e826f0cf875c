"""Candidate tables: a partition's best k per query, their merge across partitions, and the candidate lists.

    partial   one corpus partition's best k documents of each query: query_id, doc_id, score
    merged    the partials of every partition of a query shard -> the best k per query, ranked
    lists     one row per query: query_id, query (its text), candidates: [{doc_id, score, rank}] best first

The lists are the input `embedrank rerank` reads as candidate lists whose candidates carry only a doc_id (their
text comes from `--corpus`). Ranks are 1 = best; ties are broken by doc_id, as everywhere in embedrank.

Ids keep their type (ids.py): `query_id` has the type of the query vectors' ids, `doc_id` that of the corpus's,
int64 or string, so ties between int64 doc_ids go to the numerically smaller one (the keys of vectors.id_keys
order them the same way). Pure Arrow: no Ray, no torch, no I/O.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..ids import INT64, STRING, column_id_type, id_array, item_id_type, schema_id_type

PARTIAL_COLUMNS = ("query_id", "doc_id", "score")


def partial_schema(query_id: pa.DataType, doc_id: pa.DataType) -> pa.Schema:
    """A partial's schema for ids of these types (int64 or string)."""
    return pa.schema([("query_id", query_id), ("doc_id", doc_id), ("score", pa.float32())])


def candidate_type(doc_id: pa.DataType) -> pa.DataType:
    """One candidate of a list: {doc_id, score, rank}."""
    return pa.struct([("doc_id", doc_id), ("score", pa.float32()), ("rank", pa.int32())])


def typed_ids(column: pa.Array | pa.ChunkedArray, id_type: str | None) -> pa.Array | pa.ChunkedArray:
    """An id column as `id_type` (ids.INT64 | ids.STRING); None: its own type (integers as int64, else text)."""
    own = INT64 if column_id_type(str(column.type)) == INT64 else STRING
    return id_array(column, id_type or own)


def list_id_types(schema: pa.Schema) -> dict[str, str | None]:
    """The id types of a candidate lists file: {"query_id": ..., "doc_id": ...} (ids.INT64 | ids.STRING)."""
    doc = item_id_type(schema.field("candidates").type) if "candidates" in schema.names else None
    return {"query_id": schema_id_type(schema, "query_id"), "doc_id": doc}


def partial_table(
    query_ids: pa.Array, rows: np.ndarray, doc_ids: pa.Array, keys: np.ndarray, scores: np.ndarray
) -> pa.Table:
    """A partition's candidates: (query row, key, score) triples named by the query's and document's ids (each
    kept in its type)."""
    return pa.table(
        {
            "query_id": query_ids.take(pa.array(rows, pa.int64())),
            "doc_id": doc_ids.take(pa.array(keys, pa.int64())),
            "score": pa.array(scores, pa.float32()),
        },
        schema=partial_schema(query_ids.type, doc_ids.type),
    )


def merge_partials(tables: list[pa.Table], k: int) -> pa.Table:
    """Partials of several partitions (or merged tables) -> the best k per query: query_id, doc_id, score,
    rank, sorted by query_id then rank. A document found in several partitions (its chunks were split across
    files) keeps its best score. Every table holds ids of the same types (one run's); a table that does not
    raises ValueError rather than compare an integer id with a string one."""
    first = tables[0].schema
    schema = partial_schema(first.field("query_id").type, first.field("doc_id").type)
    for t in tables:
        for name in ("query_id", "doc_id"):
            if t.schema.field(name).type != schema.field(name).type:
                raise ValueError(
                    f"candidates with {schema.field(name).type} and {t.schema.field(name).type} {name} values "
                    "cannot be merged: every id of one side needs one type"
                )
    table = pa.concat_tables([t.select(PARTIAL_COLUMNS).cast(schema) for t in tables])
    best = table.group_by(["query_id", "doc_id"], use_threads=False).aggregate([("score", "max")])
    best = pa.table(
        {"query_id": best.column("query_id"), "doc_id": best.column("doc_id"), "score": best.column("score_max")}
    )
    ordered = best.sort_by([("query_id", "ascending"), ("score", "descending"), ("doc_id", "ascending")])
    rank = places(ordered.column("query_id"))
    ranked = ordered.append_column("rank", pa.array(rank, pa.int32()))
    return ranked.filter(pa.array(rank <= k))


def places(sorted_keys: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """1, 2, 3... within each run of equal values of a sorted column."""
    values = sorted_keys.to_numpy(zero_copy_only=False)
    index = np.arange(len(values))
    starts = np.ones(len(values), dtype=bool)
    starts[1:] = values[1:] != values[:-1]
    return index - np.maximum.accumulate(np.where(starts, index, 0)) + 1


def candidate_lists(merged: pa.Table, query_ids: pa.Array, texts: pa.Array | None = None) -> pa.Table:
    """Merged candidates (sorted by query_id, then rank) -> one row per query of `query_ids` (of the type of
    merged's query_id), in that order: query_id, query (when `texts` is given), candidates (best first; empty
    for a query without any)."""
    qids = merged.column("query_id").combine_chunks()
    candidate = candidate_type(merged.schema.field("doc_id").type)
    values = pa.StructArray.from_arrays(
        [merged.column(n).combine_chunks() for n in ("doc_id", "score", "rank")], fields=list(candidate)
    )
    starts = np.flatnonzero(places(qids) == 1)
    counts = np.diff(np.append(starts, len(qids)))
    distinct = qids.take(pa.array(starts, pa.int64()))
    at = pc.index_in(query_ids, value_set=distinct)  # null: the query has no candidates
    found = pc.is_valid(at).to_numpy(zero_copy_only=False)
    position = pc.fill_null(at, 0).to_numpy(zero_copy_only=False)
    lengths = np.where(found, counts[position] if len(counts) else 0, 0)
    offsets = np.zeros(len(query_ids) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(lengths)
    # Each query's candidates are the run starting at its first row in `merged`.
    first = np.where(found, starts[position] if len(starts) else 0, 0)
    take = np.repeat(first - offsets[:-1], lengths) + np.arange(offsets[-1])
    lists = pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(take, pa.int64())))
    columns = {"query_id": query_ids}
    if texts is not None:
        columns["query"] = texts.cast(pa.string())
    columns["candidates"] = lists
    return pa.table(columns)
