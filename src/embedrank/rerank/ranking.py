"""Per-query ranks of a complete shard's scores: 1 = best, ties broken by doc_id, cut to top_k.

Scores are staged with text ids; a shard's ids take the run's types (rerank/id_types.py) before it is ranked,
so that ties between int64 doc_ids go to the numerically smaller one.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..ids import id_array
from ..io import storage
from ..io.parquet import read_tables, write_table
from ..schema import RANKED_COLUMNS


def rank_scores(table: pa.Table, top_k: int | None) -> tuple[pa.Table, int]:
    """Rank pairs per query (1 = best score, ties broken by doc_id); keep the best `top_k`. -> (table, dropped)."""
    ordered = table.sort_by([("query_id", "ascending"), ("score", "descending"), ("doc_id", "ascending")])
    queries = ordered.column("query_id").to_numpy(zero_copy_only=False)
    index = np.arange(len(queries))
    starts = np.ones(len(queries), dtype=bool)
    starts[1:] = queries[1:] != queries[:-1]
    rank = index - np.maximum.accumulate(np.where(starts, index, 0)) + 1
    ranked = pa.table(
        {name: pa.array(rank, pa.int32()) if name == "rank" else ordered.column(name) for name in RANKED_COLUMNS}
    )
    if top_k is None:
        return ranked, 0
    kept = ranked.filter(pc.less_equal(ranked.column("rank"), top_k))
    return kept, ranked.num_rows - kept.num_rows


def typed_scores(table: pa.Table, id_types: dict[str, str] | None) -> pa.Table:
    """Staged scores (text ids) -> the same with query_id and doc_id in the run's types (None: as they are)."""
    for name, id_type in (id_types or {}).items():
        at = table.schema.get_field_index(name)
        table = table.set_column(at, name, id_array(table.column(name), id_type))
    return table


def rank_shard_files(
    paths: list[str],
    out_path: str,
    top_k: int | None,
    staging_uri: str,
    storage_config,
    metadata: dict,
    id_types: dict[str, str] | None = None,
) -> int:
    """Read a complete shard's staged scores, rank them in the run's id types, write one file at `out_path`;
    returns pairs dropped."""
    fs, _ = storage.filesystem(staging_uri, storage_config)
    staged = read_tables([storage.to_uri(fs, p) for p in paths], storage_config)
    ranked, dropped = rank_scores(typed_scores(staged, id_types), top_k)
    write_table(fs, out_path, ranked.replace_schema_metadata(metadata))
    for path in paths:
        fs.rm_file(path)
    return dropped
