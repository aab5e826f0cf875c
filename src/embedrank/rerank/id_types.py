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
from ..ids import column_id_type, file_id_type, sampled_id_type, schema_id_type, settle_id_type
from ..io.sources import SAMPLE_LINES, Shard, ShardInfo, iter_rows
from .pairs import input_form


def struct_field_type(type_name: str, name: str) -> str | None:
    """The type name of field `name` of the first struct in an Arrow type name, e.g. 'int64' for doc_id in
    'list<element: struct<doc_id: int64, text: string>>'; None when there is none."""
    start = type_name.find("struct<")
    if start < 0:
        return None
    fields, depth, begin = [], 0, start + len("struct<")
    for at in range(begin, len(type_name)):
        char = type_name[at]
        if char == "<":
            depth += 1
        elif char == ">" and depth:
            depth -= 1
        elif (char == ">" or char == ",") and depth == 0:  # the struct's end, or the end of one of its fields
            fields.append(type_name[begin:at])
            begin = at + 1
            if char == ">":
                break
    for field in fields:
        field_name, _, kind = field.strip().partition(": ")
        if field_name == name:
            return kind.removesuffix(" not null").strip()
    return None


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
    field = struct_field_type(info.columns.get(c.candidates_column, ""), "doc_id")
    return column_id_type(field) if field else None


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
