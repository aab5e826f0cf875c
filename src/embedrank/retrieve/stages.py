"""The retrieve job's Ray work: score a query unit against a corpus partition; merge a complete query shard.

A work item is (query unit, corpus partition): a task reads the unit's query vectors, streams the partition's
vectors past them block by block (topk.RunningTopK: matrix products in torch, on the GPU when the task has
one), and stages one partial file per query shard: each query's best k of that partition. Scores never leave
the task. The item of partition 0 also sends each shard's end marker. Staged names come from the shard and the
partition, so a retried task replaces its own earlier attempt.

Once every partition of a query shard is staged, the driver's commit step runs `merge_shard` as a task: the
partials become the shard's candidate lists (candidates.py), and only then does the shard commit.

Ids are read in the run's types (`id_types`, settled in planning: retrieve/job.py), so a partition's keys,
its partials and the merged lists all order int64 doc ids as numbers.
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
from ..quantize import Int8Range
from ..runtime.staging import row_ranges
from .candidates import candidate_lists, merge_partials, partial_table, typed_ids
from .vectors import EMBEDDING, ID, column_matrix, id_keys, iter_vectors, read_columns, read_footer

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
    search: dict | None = None,
    id_types: dict[str, str] | None = None,
) -> pa.Table:
    """Task: score each work item of the batch (one, from the graph); returns FILE_META rows. `search`: what
    to search and rescore (vectors.plan_search; None: the float `embedding` column); `id_types`: the run's
    {"query_id": ..., "doc_id": ...} (ids.INT64 | ids.STRING; None: each file's own)."""
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
            search=search,
            id_types=id_types,
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
    search=None,
    rescore=None,
    rescore_k: int = 0,
) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray, int]:
    """[Q, d] float queries against a partition: its ids, and its vectors in the same order as blocks of rows.
    -> (the partition's distinct ids sorted, query row, key into those ids, score, pairs scored): each query's
    best `top_k` documents, best first.

    `search` (a search.Encoding; None: float32) says what the blocks hold and how they are scored.
    `rescore` = (Encoding, a function returning the blocks of a finer column in the same row order): each
    query's best `rescore_k` by `search` are scored again with that column, and the best `top_k` kept."""
    import torch

    from .search import Encoding
    from .search import rescore as rescore_candidates
    from .topk import KEY_LIMIT, PAD_KEY, DocBlock, RunningTopK

    # Keys order the partition's documents by id: the kernel breaks ties by key.
    distinct, keys = id_keys(doc_ids)
    if len(distinct) >= KEY_LIMIT - 1:
        raise PlanError(
            f"a corpus partition holds {len(distinct)} documents, more than {KEY_LIMIT - 2}; lower "
            "retrieve.corpus_rows_per_task"
        )
    enc = search or Encoding("float32", queries.shape[1] if queries.ndim == 2 else 0)
    matrix, affine = enc.queries(queries, device)
    kept = max(top_k, rescore_k) if rescore is not None else top_k
    running = RunningTopK(matrix, kept, query_block, distinct=len(distinct) == len(keys), affine=affine)
    offset = 0
    for block in doc_blocks:
        if len(queries) and len(block):
            running.add(DocBlock.build(enc.docs(block), keys[offset : offset + len(block)], device, enc.compute))
        offset += len(block)
    if rescore is not None and len(queries) and offset:
        finer, blocks = rescore
        values, found = rescore_candidates(finer, queries, running.keys, keys, blocks(), top_k)
        filled = found != PAD_KEY
        rows, found, scores = (
            torch.nonzero(filled)[:, 0].cpu().numpy(),
            found[filled].cpu().numpy(),
            values[filled].to(torch.float32).cpu().numpy(),
        )
    else:
        rows, found, scores = running.result()
    return distinct, rows, found, scores, len(queries) * offset


def query_vectors(shards: list[Shard], storage_config, dim: int) -> tuple[list[pa.Table], list[np.ndarray]]:
    """Each query file's ids and float vectors: its float column when it has one, else its int8 codes
    dequantized with the file's range, else its sign bits as +1/-1."""
    from .search import query_floats

    tables, vectors = [], []
    for shard in shards:
        footer = read_footer(shard, storage_config)
        dtype = next((d for d in ("float32", "float16", "int8", "binary") if footer.column_of(d)), "float32")
        column = footer.column_of(dtype) or EMBEDDING
        table = read_columns(shard, [ID, column], storage_config)
        codes = column_matrix(table.column(column), dtype, shard.uri)
        rng = Int8Range.from_json(footer.int8_range) if dtype == "int8" else None
        tables.append(table)
        vectors.append(query_floats(codes, dtype, rng, dim).reshape(-1, dim) if len(codes) else np.zeros((0, dim)))
    return tables, vectors


def search_options(search: dict | None, corpus: list[Shard], doc_block: int, storage_config) -> tuple[dict, str]:
    """score_partition's search, rescore and rescore_k for a plan_search dict; and the searched column."""
    if not search:
        return {}, EMBEDDING
    from .search import Encoding

    rng = Int8Range.from_json(search["int8_range"]) if search.get("int8_range") else None
    options = {"search": Encoding(search["dtype"], search["dim"], rng)}
    if search.get("rescore_column"):
        column, dtype = search["rescore_column"], search["rescore_dtype"]
        options["rescore"] = (
            Encoding(dtype, search["dim"], rng),
            lambda: (b for s in corpus for b in iter_vectors(s, doc_block, storage_config, column, dtype)),
        )
        options["rescore_k"] = search["rescore_k"]
    return options, search["column"]


def score_item(
    item: dict,
    *,
    top_k: int,
    query_block: int,
    doc_block: int,
    device: str,
    staging_uri: str,
    storage_config,
    search: dict | None = None,
    id_types: dict[str, str] | None = None,
) -> list[dict]:
    """One (query unit, corpus partition): stage each query shard's partial; the FILE_META rows. With
    search["exact_column"], each shard's exact float top k of the partition is staged beside it
    (exact-NNNNNN.parquet), from which merge_shard measures the search's recall."""
    start = time.perf_counter()
    partition, partitions = item["partition"], item["partitions"]
    corpus = [Shard.from_dict(d) for d in item["corpus"]]
    queries = [Shard.from_dict(d) for d in item["queries"]]
    dim = (search or {}).get("dim") or read_footer(corpus[0], storage_config).dim
    tables, vectors = query_vectors(queries, storage_config, dim)
    matrix = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    types = id_types or {}
    ids = [typed_ids(read_columns(s, [ID], storage_config).column(ID), types.get("doc_id")) for s in corpus]
    doc_ids = pa.chunked_array([chunk for array in ids for chunk in array.chunks], ids[0].type)
    options, column = search_options(search, corpus, doc_block, storage_config)
    dtype = (search or {}).get("dtype", "float32")
    blocks = (block for shard in corpus for block in iter_vectors(shard, doc_block, storage_config, column, dtype))
    ids, rows, found, scores, pairs = score_partition(
        matrix, doc_ids, blocks, top_k=top_k, query_block=query_block, device=device, **options
    )
    exact = None
    if (search or {}).get("exact_column"):
        exact_blocks = (
            block
            for shard in corpus
            for block in iter_vectors(shard, doc_block, storage_config, search["exact_column"], "float32")
        )
        exact = score_partition(matrix, doc_ids, exact_blocks, top_k=top_k, query_block=query_block, device=device)
    doc_ids = ids
    vectors_in_partition = pairs // max(len(matrix), 1)
    busy = time.perf_counter() - start
    worker = f"{socket.gethostname()}:{os.getpid()}"
    fs, root = storage.filesystem(staging_uri, storage_config)
    metas, first = [], 0
    for shard, table, v in zip(queries, tables, vectors):
        n = len(v)
        mine = (rows >= first) & (rows < first + n)
        query_ids = typed_ids(table.column(ID).combine_chunks(), types.get("query_id"))
        partial = partial_table(query_ids, rows[mine] - first, doc_ids, found[mine], scores[mine])
        path = posixpath.join(root, shard.key, f"partial-{partition:06d}.parquet")
        if exact is not None:  # written first: a staged partial always has its exact twin
            e_ids, e_rows, e_found, e_scores, _ = exact
            at = (e_rows >= first) & (e_rows < first + n)
            write_table(
                fs, exact_path(path), partial_table(query_ids, e_rows[at] - first, e_ids, e_found[at], e_scores[at])
            )
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
    id_types: dict[str, str] | None = None,
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
    query_ids = typed_ids(queries.column(ID).combine_chunks(), (id_types or {}).get("query_id"))
    lists = candidate_lists(merged, query_ids, texts)
    twins = [exact_path(p) for p in paths]
    if twins and all(fs.exists(t) for t in twins):
        exact = merge_partials([read_tables([storage.to_uri(fs, t) for t in twins], storage_config)], top_k)
        metadata = {**metadata, RECALL_KEY: json.dumps({"k": top_k, **recall_counts(merged, exact)})}
    write_table(fs, out_path, lists.replace_schema_metadata(metadata))
    for path in paths + [t for t in twins if fs.exists(t)]:
        fs.rm_file(path)
    return lists.num_rows, merged.num_rows


RECALL_KEY = "embedrank.recall"  # candidates file metadata: {"k", "hits", "possible"} against exact float32


def exact_path(partial_path: str) -> str:
    """Where a partial's exact float32 twin is staged (recall measurement)."""
    folder, name = posixpath.split(partial_path)
    return posixpath.join(folder, "exact-" + name[len("partial-") :])


def recall_counts(found: pa.Table, exact: pa.Table) -> dict:
    """Merged candidates of a search and of the exact search (query_id, doc_id, rank) -> hits: pairs in both;
    possible: the exact lists' length summed (recall@k = hits / possible)."""
    pairs = {(q, d) for q, d in zip(exact.column("query_id").to_pylist(), exact.column("doc_id").to_pylist())}
    hits = sum(
        (q, d) in pairs for q, d in zip(found.column("query_id").to_pylist(), found.column("doc_id").to_pylist())
    )
    return {"hits": hits, "possible": len(pairs)}


def recall_of(files: list[str], storage_config=None) -> dict | None:
    """recall@k of a retrieve output's candidate files against exact float32 search, from their footers
    (None: none was measured). For the run report: {"k", "hits", "possible", "recall"}."""
    import pyarrow.parquet as pq

    total = None
    for uri in files:
        fs, path = storage.filesystem(uri, storage_config)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).schema_arrow.metadata or {}
        raw = meta.get(RECALL_KEY.encode())
        if raw:
            counts = json.loads(raw)
            total = total or {"k": counts["k"], "hits": 0, "possible": 0}
            total["hits"] += counts["hits"]
            total["possible"] += counts["possible"]
    if total:
        total["recall"] = round(total["hits"] / max(total["possible"], 1), 4)
    return total
