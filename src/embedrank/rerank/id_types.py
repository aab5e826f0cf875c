"""The id types of a rerank run's scores (ids.py): query_id and doc_id, each int64 or string, settled in planning.

Pairs travel as text inside the run (the corpus join, duplicate pairs and the dead letters all see text); only
the ranked scores are written in the run's types. Each column's type comes from the pending input files:

    Parquet      the footer's type of input.query_id_column, of input.doc_id_column (flat pairs) or of the
                 `doc_id` field of the candidates list's items (candidate lists)
    JSON Lines   the values of the first lines (io/sources.ShardInfo.sampled); for candidate lists, the doc_ids
                 inside the candidates of the first lines, read here (the sample names only top-level values)

An output that holds committed scores keeps their types; output.id_type: string writes both as text. In an int64
run a row whose id is a string is a dead letter (`wrong_id_type`, rerank/pairs.py), never cast.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from ..errors import BadShardError
from ..ids import file_id_type, item_id_type, sampled_id_type, schema_id_type, settle_id_type
from ..io.sources import SAMPLE_LINES, Shard, ShardInfo, iter_rows
from .pairs import input_form


def sampled_candidate_ids(shard: Shard, candidates_column: str, storage_config=None) -> frozenset[str]:
    """The Python type names of the doc_ids in the candidates of a JSON Lines file's first lines (as many as
    planning samples). A file that breaks off there gives none: the run reports it as it reads it."""
    kinds: set[str] = set()
    try:
        for raw in iter_rows(shard, SAMPLE_LINES, None, storage_config):
            for row in raw.rows:
                candidates = row.get(candidates_column) if isinstance(row, dict) else None
                if isinstance(candidates, list):
                    kinds.update(type(c.get("doc_id")).__name__ for c in candidates if isinstance(c, dict))
            break  # the first lines only
    except BadShardError:
        return frozenset()
    return frozenset(kinds)


def doc_id_type(shard: Shard, info: ShardInfo, input_cfg, storage_config=None) -> str | None:
    """One pending input file's doc_id type (ids.INT64 | STRING | MIXED), or None when unknown."""
    c = input_cfg
    if input_form(info.columns, c) == "pairs":
        return file_id_type(info, c.doc_id_column)
    if info.sampled is not None:
        return sampled_id_type(sampled_candidate_ids(shard, c.candidates_column, storage_config))
    schema = info.schema
    if schema is None or c.candidates_column not in schema.names:
        return None
    return item_id_type(schema.field(c.candidates_column).type)


def settle_score_ids(cfg, pending: list[Shard], infos: dict[str, ShardInfo], kept: pa.Schema | None) -> dict:
    """{"query_id": ..., "doc_id": ...}: the run's id types (ids.INT64 | ids.STRING) from its pending input
    files and `kept`, the schema of the committed scores the output keeps (None: none)."""
    c = cfg.input
    queries = {s.uri: kind for s in pending if (kind := file_id_type(infos[s.key], c.query_id_column))}
    with ThreadPoolExecutor(max_workers=8) as pool:
        kinds = pool.map(lambda s: doc_id_type(s, infos[s.key], c, cfg.storage), pending)
        docs = {s.uri: kind for s, kind in zip(pending, kinds) if kind}
    lists = any(input_form(infos[s.key].columns, c) == "lists" for s in pending)
    doc_column = f"{c.candidates_column}.doc_id" if lists else c.doc_id_column
    inputs = {"query_id": (queries, c.query_id_column), "doc_id": (docs, doc_column)}
    return {
        column: settle_id_type(
            cfg.output.id_type,
            found,
            schema_id_type(kept, column) if kept is not None else None,
            output_uri=cfg.output.uri,
            column=input_column,
            output_column=column,
        )
        for column, (found, input_column) in inputs.items()
    }
