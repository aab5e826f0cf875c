"""Per-query ranks of a complete shard's scores: 1 = best, ties broken by doc_id, cut to top_k."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def rank_shard_files(
    paths: list[str], out_path: str, top_k: int | None, staging_uri: str, storage_config, metadata: dict
) -> int:
    """Read a complete shard's staged scores, rank them, write one file at `out_path`; returns pairs dropped."""
    fs, _ = storage.filesystem(staging_uri, storage_config)
    ranked, dropped = rank_scores(read_tables([storage.to_uri(fs, p) for p in paths], storage_config), top_k)
    write_table(fs, out_path, ranked.replace_schema_metadata(metadata))
    for path in paths:
        fs.rm_file(path)
    return dropped
