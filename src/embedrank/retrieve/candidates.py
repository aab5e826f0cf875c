"""Candidate tables: a partition's best k per query, their merge across partitions, and the candidate lists.

    partial   one corpus partition's best k documents of each query: query_id, doc_id, score
    merged    the partials of every partition of a query shard -> the best k per query, ranked
    lists     one row per query: query_id, query (its text), candidates: [{doc_id, score, rank}] best first

The lists are the input `embedrank rerank` reads as candidate lists whose candidates carry only a doc_id (their
text comes from `--corpus`). Ranks are 1 = best; ties are broken by doc_id, as everywhere in embedrank.
Pure Arrow: no Ray, no torch, no I/O.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PARTIAL_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("score", pa.float32())])
CANDIDATE = pa.struct([("doc_id", pa.string()), ("score", pa.float32()), ("rank", pa.int32())])


def partial_table(
    query_ids: pa.Array, rows: np.ndarray, doc_ids: pa.Array, keys: np.ndarray, scores: np.ndarray
) -> pa.Table:
    """A partition's candidates: (query row, key, score) triples named by the query's and document's ids."""
    return pa.table(
        {
            "query_id": query_ids.take(pa.array(rows, pa.int64())),
            "doc_id": doc_ids.take(pa.array(keys, pa.int64())),
            "score": pa.array(scores, pa.float32()),
        },
        schema=PARTIAL_SCHEMA,
    )


def merge_partials(tables: list[pa.Table], k: int) -> pa.Table:
    """Partials of several partitions (or merged tables) -> the best k per query: query_id, doc_id, score,
    rank, sorted by query_id then rank. A document found in several partitions (its chunks were split across
    files) keeps its best score."""
    table = pa.concat_tables([t.select(PARTIAL_SCHEMA.names).cast(PARTIAL_SCHEMA) for t in tables])
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
    """Merged candidates (sorted by query_id, then rank) -> one row per query of `query_ids`, in that order:
    query_id, query (when `texts` is given), candidates (best first; empty for a query without any)."""
    qids = merged.column("query_id").combine_chunks()
    values = pa.StructArray.from_arrays(
        [merged.column(n).combine_chunks() for n in ("doc_id", "score", "rank")], fields=list(CANDIDATE)
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
    columns = {"query_id": query_ids.cast(pa.string())}
    if texts is not None:
        columns["query"] = texts.cast(pa.string())
    columns["candidates"] = lists
    return pa.table(columns)
