"""The retrieve job's Ray work: score a query unit against a corpus partition; merge a complete query shard.

A work item is (query unit, corpus partition): a task reads the unit's query vectors, streams the partition's
vectors past them block by block (topk.RunningTopK: matrix products in torch, on the GPU when the task has
one), and stages one partial file per query shard: each query's best k of that partition. Scores never leave
the task. The item of partition 0 also sends each shard's end marker. Staged names come from the shard and the
partition, so a retried task replaces its own earlier attempt.

Once every partition of a query shard is staged, the driver's commit step runs `merge_shard` as a task: the
partials become the shard's candidate lists (candidates.py), and only then does the shard commit.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from .. import schema as S
from ..errors import PlanError
from ..io import storage
from ..io.parquet import read_tables, write_table
from ..io.sources import Shard
from ..runtime.staging import row_ranges
from .candidates import candidate_lists, merge_partials, partial_table
from .vectors import EMBEDDING, ID, embedding_matrix, id_keys, iter_vectors, read_columns

FILES_PER_MERGE = 8  # partial files merged at a time: a shard's merge holds (this + 1) x queries x k rows


def file_meta(shard: str, kind: str, path: str = "", rows: int = 0, ranges=(), **counts) -> dict:
    """One FILE_META row (schema.FILE_META_SCHEMA), the writer's report of a staged file or an end marker."""
    meta = {name: 0 for name in S.FILE_META_SCHEMA.names}
    meta.update(
        shard=shard, kind=kind, path=path, rows=rows, ranges=[list(r) for r in ranges], shard_total=None, **counts
    )
    return {
        name: json.dumps(meta[name] or ({} if name != "ranges" else [])) if name in S.FILE_META_JSON else meta[name]
        for name in S.FILE_META_SCHEMA.names
    }


def score_items(
    batch: dict,
    *,
    top_k: int,
    query_block: int,
    doc_block: int,
    use_gpu: bool,
    torch_threads: int | None,
    staging_uri: str,
    storage_config,
) -> pa.Table:
    """Task: score each work item of the batch (one, from the graph); returns FILE_META rows."""
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = "cuda" if use_gpu else "cpu"
    metas: list[dict] = []
    for item in batch["item"]:
        metas += score_item(
            json.loads(item),
            top_k=top_k,
            query_block=query_block,
            doc_block=doc_block,
            device=device,
            staging_uri=staging_uri,
            storage_config=storage_config,
        )
    return pa.Table.from_pylist(metas, schema=S.FILE_META_SCHEMA)


def score_partition(
    queries: np.ndarray,
    doc_ids: pa.ChunkedArray,
    doc_blocks: Iterable[np.ndarray],
    *,
    top_k: int,
    query_block: int,
    device: str,
) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray, int]:
    """[Q, d] queries against a partition: its ids, and its vectors in the same order as blocks of rows.
    -> (the partition's distinct ids sorted, query row, key into those ids, score, pairs scored): each query's
    best `top_k` documents, best first."""
    import torch

    from .topk import KEY_LIMIT, DocBlock, RunningTopK

    # Keys order the partition's documents by id: the kernel breaks ties by key.
    distinct, keys = id_keys(doc_ids)
    if len(distinct) >= KEY_LIMIT - 1:
        raise PlanError(
            f"a corpus partition holds {len(distinct)} documents, more than {KEY_LIMIT - 2}; lower "
            "retrieve.corpus_rows_per_task"
        )
    running = RunningTopK(torch.from_numpy(queries).to(device), top_k, query_block, distinct=len(distinct) == len(keys))
    offset = 0
    for block in doc_blocks:
        if len(queries) and len(block):
            running.add(DocBlock.build(block, keys[offset : offset + len(block)], device))
        offset += len(block)
    rows, found, scores = running.result()
    return distinct, rows, found, scores, len(queries) * offset


def score_item(
    item: dict, *, top_k: int, query_block: int, doc_block: int, device: str, staging_uri: str, storage_config
) -> list[dict]:
    """One (query unit, corpus partition): stage each query shard's partial; the FILE_META rows."""
    start = time.perf_counter()
    partition, partitions = item["partition"], item["partitions"]
    corpus = [Shard.from_dict(d) for d in item["corpus"]]
    queries = [Shard.from_dict(d) for d in item["queries"]]
    tables = [read_columns(s, [ID, EMBEDDING], storage_config) for s in queries]
    vectors = [embedding_matrix(t.column(EMBEDDING), s.uri) for s, t in zip(queries, tables)]
    dim = max((v.shape[1] for v in vectors if v.size), default=0)  # widths were checked in planning
    matrix = np.concatenate([v.reshape(-1, dim) for v in vectors]) if dim else np.zeros((0, 0), np.float32)
    doc_ids = pa.chunked_array(
        [read_columns(s, [ID], storage_config).column(ID).cast(pa.string()) for s in corpus], pa.string()
    )
    blocks = (block for shard in corpus for block in iter_vectors(shard, doc_block, storage_config))
    doc_ids, rows, found, scores, pairs = score_partition(
        matrix, doc_ids, blocks, top_k=top_k, query_block=query_block, device=device
    )
    vectors_in_partition = pairs // max(len(matrix), 1)
    busy = time.perf_counter() - start
    worker = f"{socket.gethostname()}:{os.getpid()}"
    fs, root = storage.filesystem(staging_uri, storage_config)
    metas, first = [], 0
    for shard, table, v in zip(queries, tables, vectors):
        n = len(v)
        mine = (rows >= first) & (rows < first + n)
        partial = partial_table(
            table.column(ID).combine_chunks().cast(pa.string()), rows[mine] - first, doc_ids, found[mine], scores[mine]
        )
        path = posixpath.join(root, shard.key, f"partial-{partition:06d}.parquet")
        write_table(fs, path, partial)
        shard_pairs = n * vectors_in_partition
        # Queries count once per shard (in partition 0's file); pairs scored count in every partition's file.
        metas.append(
            file_meta(
                shard.key,
                "data",
                path,
                rows=n if partition == 0 else 0,
                ranges=row_ranges(np.array([partition])),
                model_rows=shard_pairs,
                actors={worker: [busy * n / max(len(matrix), 1), shard_pairs]},
            )
        )
        if partition == 0:
            metas.append(file_meta(shard.key, "end", rows=n))
            metas[-1]["shard_total"] = partitions
        first += n
    return metas


def merge_shard(
    paths: list[str],
    out_path: str,
    query_shard: dict,
    text_column: str | None,
    top_k: int,
    staging_uri: str,
    storage_config,
    metadata: dict,
) -> tuple[int, int]:
    """Task: a complete query shard's partials -> its candidate lists at `out_path` (staging); removes the
    partials. Returns (queries, candidates written)."""
    fs, _ = storage.filesystem(staging_uri, storage_config)
    merged = None
    for start in range(0, len(paths), FILES_PER_MERGE):
        group = read_tables([storage.to_uri(fs, p) for p in paths[start : start + FILES_PER_MERGE]], storage_config)
        merged = merge_partials([group] if merged is None else [merged, group], top_k)
    shard = Shard.from_dict(query_shard)
    queries = read_columns(shard, [ID] + ([text_column] if text_column else []), storage_config)
    texts = queries.column(text_column).combine_chunks() if text_column else None
    lists = candidate_lists(merged, queries.column(ID).combine_chunks().cast(pa.string()), texts)
    write_table(fs, out_path, lists.replace_schema_metadata(metadata))
    for path in paths:
        fs.rm_file(path)
    return lists.num_rows, merged.num_rows
