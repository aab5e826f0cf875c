"""Exact top-k retrieval between two Ray Datasets of vectors, for users' own Ray Data pipelines.

    from embedrank.retrieve.processor import retrieve_top_k

    candidates = retrieve_top_k(query_vectors, corpus_vectors, top_k=100)   # a Dataset: query_id, candidates

Both Datasets need an id column and a vector column (fixed-size lists, lists, or Ray Data's tensor columns, as
`map_batches` returning numpy arrays makes them), with vectors of one width. The result has the candidate-list
format of `embedrank retrieve`: one row per query, `candidates: [{doc_id, score, rank}]` best first, ties
broken by doc_id, a document with several vectors scored by its best one. Ids keep their type: an integer id
column gives int64 ids (ties broken numerically), any other column string ids; `id_type="string"` writes both
as text, and corpus blocks whose ids disagree (integers in one, strings in another) raise ValueError.

A corpus of compact vectors (embedrank.quantize: int8 codes, packed sign bits) is searched with
`search="int8"` (and its `int8_range`, as the embed job writes it in each file's metadata) or `search="binary"`,
optionally rescored from a finer column of the corpus (`rescore_column`, `rescore_dtype`, `rescore_k`); the
queries stay float.

The corpus is cut into partitions (groups of its blocks); one task scores one query block against one
partition and returns that partition's best k per query; one task per query block merges them. The driver
holds object references only, never scores.
"""

from __future__ import annotations

import pyarrow as pa

from ..ids import STRING
from .candidates import candidate_lists, merge_partials, partial_table, typed_ids
from .stages import score_partition
from .vectors import column_matrix, embedding_matrix


def retrieve_top_k(
    queries,
    corpus,
    *,
    top_k: int = 100,
    id_column: str = "id",
    embedding_column: str = "embedding",
    text_column: str | None = None,
    corpus_partitions: int | None = None,
    query_block: int = 4096,
    doc_block: int = 16384,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    search: str = "float32",
    int8_range: str | None = None,
    rescore_column: str | None = None,
    rescore_dtype: str = "float32",
    rescore_k: int = 100,
    id_type: str = "auto",
):
    """Each query's `top_k` corpus documents by inner product, as a Dataset of candidate lists.

    `text_column`: a column of `queries` copied to the output as `query` (rerank needs the query text).
    `corpus_partitions`: how many partitions the corpus blocks are grouped into (default: one per block).
    `num_gpus` > 0 runs the matrix products on the GPU each scoring task gets.
    `search`: what the corpus's `embedding_column` holds (float32 | float16 | int8 | binary); `rescore_column`:
    a finer column of the corpus whose vectors score each query's best `rescore_k` again.
    `id_type`: auto (integer ids as int64, others as strings) | string (every id as text).
    """
    import ray
    import ray.data

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if id_type not in ("auto", "string"):
        raise ValueError(f"id_type must be 'auto' or 'string', got {id_type!r}")
    query_columns = [id_column, embedding_column] + ([text_column] if text_column else [])
    query_refs = queries.select_columns(query_columns).to_arrow_refs()
    if rescore_column and rescore_k < top_k:
        raise ValueError(f"rescore_k ({rescore_k}) must be at least top_k ({top_k})")
    corpus_columns = [id_column, embedding_column] + ([rescore_column] if rescore_column else [])
    corpus_refs = corpus.select_columns(corpus_columns).to_arrow_refs()
    if not corpus_refs:
        raise ValueError("the corpus Dataset is empty")
    parts = min(corpus_partitions or len(corpus_refs), len(corpus_refs))
    bounds = [len(corpus_refs) * i // parts for i in range(parts + 1)]
    groups = [corpus_refs[lo:hi] for lo, hi in zip(bounds, bounds[1:])]
    score = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(score_block)
    merge = ray.remote(num_cpus=0.25)(merge_block)
    options = dict(top_k=top_k, id_column=id_column, embedding_column=embedding_column, id_type=id_type)
    compact = dict(
        search=search,
        int8_range=int8_range,
        rescore_column=rescore_column,
        rescore_dtype=rescore_dtype,
        rescore_k=rescore_k,
    )
    merged = []
    for query_ref in query_refs:
        partials = [
            score.remote(
                query_ref,
                *group,
                query_block=query_block,
                doc_block=doc_block,
                use_gpu=num_gpus > 0,
                **options,
                **compact,
            )
            for group in groups
        ]
        merged.append(
            merge.remote(
                query_ref, *partials, top_k=top_k, id_column=id_column, text_column=text_column, id_type=id_type
            )
        )
    return ray.data.from_arrow_refs(merged)


def score_block(
    queries: pa.Table,
    *corpus: pa.Table,
    top_k: int,
    id_column: str,
    embedding_column: str,
    query_block: int,
    doc_block: int,
    use_gpu: bool,
    search: str = "float32",
    int8_range: str | None = None,
    rescore_column: str | None = None,
    rescore_dtype: str = "float32",
    rescore_k: int = 100,
    id_type: str = "auto",
) -> pa.Table:
    """Task: one block of queries against one partition (several corpus blocks) -> that partition's partial."""
    from ..quantize import Int8Range
    from .search import Encoding

    matrix = embedding_matrix(queries.column(embedding_column), "the queries Dataset")
    doc_ids = block_ids(corpus, id_column, id_type)

    def blocks(column: str, dtype: str):
        for table in corpus:
            for start in range(0, table.num_rows, doc_block):
                yield column_matrix(table.column(column).slice(start, doc_block), dtype, "the corpus Dataset")

    rng = Int8Range.from_json(int8_range) if int8_range else None
    options = {}
    if search != "float32" or rescore_column:
        options["search"] = Encoding(search, matrix.shape[1], rng)
    if rescore_column:
        options["rescore"] = (
            Encoding(rescore_dtype, matrix.shape[1], rng),
            lambda: blocks(rescore_column, rescore_dtype),
        )
        options["rescore_k"] = rescore_k
    distinct, rows, keys, scores, _ = score_partition(
        matrix,
        doc_ids,
        blocks(embedding_column, search),
        top_k=top_k,
        query_block=query_block,
        device="cuda" if use_gpu else "cpu",
        **options,
    )
    query_ids = block_ids([queries], id_column, id_type).combine_chunks()
    return partial_table(query_ids, rows, distinct, keys, scores)


def merge_block(
    queries: pa.Table, *partials: pa.Table, top_k: int, id_column: str, text_column: str | None, id_type: str = "auto"
) -> pa.Table:
    """Task: the partials of every partition for one block of queries -> its candidate lists."""
    merged = merge_partials(list(partials), top_k)
    texts = queries.column(text_column).combine_chunks() if text_column else None
    return candidate_lists(merged, block_ids([queries], id_column, id_type).combine_chunks(), texts)


def block_ids(tables: list[pa.Table], id_column: str, id_type: str) -> pa.ChunkedArray:
    """The ids of Dataset blocks in one type (auto: each column's own, typed_ids); blocks that disagree raise
    ValueError: an integer id never ties with, or sorts beside, a string one."""
    arrays = [typed_ids(t.column(id_column), STRING if id_type == "string" else None) for t in tables]
    if len({a.type for a in arrays}) > 1:
        raise ValueError(
            f"the {id_column!r} column holds integers in some blocks and strings in others; make them agree, "
            "or pass id_type='string'"
        )
    return pa.chunked_array([chunk for array in arrays for chunk in array.chunks], arrays[0].type)
