"""Vectors in, for retrieval: the committed files of an embed output, what their footers say, and their rows.

Queries and corpus are outputs of the embed job (or a nightly root: its current version). Their files are
found through the commit records (runtime/store.committed_files), never by listing folders, so a run in
progress or a killed one adds nothing. Planning reads only Parquet footers: row counts, the vector width,
and the model that made the vectors (schema metadata written by the embed job).

Vector columns may be compact (quantize.py): the footer's `embedrank.vector_columns` names each column's
dtype (float32, float16, int8, binary) and `embedrank.int8_range` the range its int8 codes were made with.

A corpus is cut into partitions of whole files; inside a partition every distinct document id gets a key, its
rank among the partition's sorted ids, which is what the top-k kernel (topk.py) orders ties by. Ids keep their
type (ids.py): int64 ids sort as numbers, strings by code point; the footer's id type is each file's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import PlanError
from ..ids import schema_id_type
from ..io import storage
from ..io.sources import Shard, list_shards
from ..runtime.store import committed_files

ID, EMBEDDING = "id", "embedding"  # the embed job's column names (schema.VECTOR_COLUMNS)


@dataclass(frozen=True)
class VectorFile:
    """One committed vectors file as planning sees it (from its footer)."""

    shard: Shard
    rows: int
    dim: int | None  # the width of the embedding column; None: not a fixed-size list
    columns: tuple[str, ...]
    model: str  # embedrank.model of the file's metadata ("" when absent)
    kind: str  # embedrank.kind: document | query ("" when absent)
    dtypes: tuple[tuple[str, str], ...] = ()  # (vector column, dtype) pairs; `embedding` first
    int8_range: str | None = None  # quantize.Int8Range as JSON, for int8 columns
    id_type: str | None = None  # ids.INT64 | ids.STRING: the `id` column's type (None: no usable id column)

    def column_of(self, dtype: str) -> str | None:
        """The file's column holding `dtype` vectors, or None."""
        return next((name for name, d in self.dtypes if d == dtype), None)

    @property
    def main_dtype(self) -> str:
        return self.dtypes[0][1] if self.dtypes else "float32"


def vector_files(uri: str, storage_config=None, what: str = "input.uri") -> list[Shard]:
    """The committed vector files of an embed output or nightly root, as shards (a version each), by URI."""
    files = committed_files(uri, storage_config)
    if not files:
        raise PlanError(f"{what} {uri} holds no committed vectors: run the embed job that writes it first")
    return list_shards(files, fmt="parquet", storage_config=storage_config)


def read_footer(shard: Shard, storage_config=None) -> VectorFile:
    """A file's VectorFile, from its Parquet footer; a file that cannot be read is a PlanError naming it."""
    fs, path = storage.filesystem(shard.uri, storage_config)
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            rows = pf.metadata.num_rows
    except (PermissionError, FileNotFoundError, ConnectionError) as exc:
        raise storage.explain(exc, shard.uri) from None
    except (OSError, ValueError) as exc:
        raise PlanError(
            f"vectors file {shard.uri} cannot be read ({type(exc).__name__}); rerun the embed job that wrote it"
        ) from None
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    dim = None
    dtypes = vector_dtypes(schema, meta)
    if EMBEDDING in schema.names:
        kind = schema.field(EMBEDDING).type
        dim = kind.list_size if pa.types.is_fixed_size_list(kind) else None
        if dim is not None and dtypes and dtypes[0][1] == "binary":
            dim *= 8
    return VectorFile(
        shard,
        rows,
        dim,
        tuple(schema.names),
        meta.get("embedrank.model", ""),
        meta.get("embedrank.kind", ""),
        dtypes,
        meta.get("embedrank.int8_range") or None,
        schema_id_type(schema, ID),
    )


def vector_dtypes(schema: pa.Schema, meta: dict) -> tuple[tuple[str, str], ...]:
    """(column, dtype) of each vector column, `embedding` first: from the footer's embedrank.vector_columns,
    else (older files, other writers) from the column's value type (uint8 is packed binary)."""
    if meta.get("embedrank.vector_columns"):
        named = json.loads(meta["embedrank.vector_columns"])
    else:
        named = {}
        for name in schema.names:
            kind = schema.field(name).type
            if (name == EMBEDDING or name.startswith("embedding_")) and pa.types.is_fixed_size_list(kind):
                value = kind.value_type
                named[name] = {pa.uint8(): "binary", pa.int8(): "int8", pa.float16(): "float16"}.get(value, "float32")
    return tuple(sorted(named.items(), key=lambda item: item[0] != EMBEDDING))


def read_footers(shards: list[Shard], storage_config=None) -> list[VectorFile]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda s: read_footer(s, storage_config), shards))


def check_files(files: list[VectorFile], what: str) -> int | None:
    """Refuse files without an id and a vector column or with another vector width; returns the width (None: no
    files)."""
    dims = set()
    for f in files:
        missing = [c for c in (ID, EMBEDDING) if c not in f.columns]
        if missing:
            raise PlanError(
                f"{what} file {f.shard.uri} has no column {missing[0]!r} (columns: "
                f"{', '.join(f.columns)}); point {what} at an output of the embed job"
            )
        if f.dim is None:
            raise PlanError(
                f"{what} file {f.shard.uri}: column {EMBEDDING!r} is not a fixed-size list of floats "
                "(as the embed job writes); point it at an output of the embed job"
            )
        dims.add(f.dim)
    if len(dims) > 1:
        raise PlanError(f"{what} holds vectors of several widths ({sorted(dims)}); re-embed it with one model.dim")
    layouts = {f.dtypes for f in files}
    if len(layouts) > 1:
        shown = sorted(",".join(d for _, d in layout) for layout in layouts)
        raise PlanError(
            f"{what} holds files with different vector columns ({' vs '.join(shown)}); re-embed it with one "
            "output.embedding_dtype and output.extra_embedding_dtypes"
        )
    if len({f.int8_range for f in files if f.column_of("int8")}) > 1:
        raise PlanError(
            f"{what} holds int8 vectors quantized with different ranges, which do not compare; re-embed it, or "
            "set output.int8_range to a fixed r"
        )
    return dims.pop() if dims else None


def files_digest(shards: list[Shard]) -> str:
    """Names one state of a set of files (URI and version each): another corpus gives another digest."""
    state = sorted((s.uri, s.version) for s in shards)
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


def partition_files(files: list[VectorFile], max_rows: int) -> list[list[VectorFile]]:
    """Consecutive whole files grouped up to `max_rows` vectors (a bigger file is a partition of its own)."""
    partitions: list[list[VectorFile]] = []
    rows = 0
    for f in files:
        if partitions and rows + f.rows <= max_rows:
            partitions[-1].append(f)
            rows += f.rows
        else:
            partitions.append([f])
            rows = f.rows
    return partitions


def embedding_matrix(column: pa.ChunkedArray | pa.Array, source: str) -> np.ndarray:
    """A column of equal-length float vectors (fixed-size lists, lists, or an extension type over them, such as
    Ray Data's tensor columns) -> [rows, dim] float32. Nulls, ragged rows and non-finite values are refused:
    any of them would silently corrupt the ranking."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(array.type, pa.ExtensionType):
        array = array.storage
    if array.null_count:
        raise PlanError(f"{source}: {array.null_count} rows have no vector; drop them or embed them again")
    rows = len(array)
    if rows == 0:
        return np.zeros((0, 0), dtype=np.float32)
    values = array.flatten().to_numpy(zero_copy_only=False)
    if values.size % rows or (
        not pa.types.is_fixed_size_list(array.type) and len(set(pc.list_value_length(array).to_numpy().tolist())) > 1
    ):
        raise PlanError(f"{source}: vectors of different lengths; every vector needs the same width")
    matrix = values.reshape(rows, -1).astype(np.float32, copy=False)
    if not np.isfinite(matrix).all():
        bad = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise PlanError(f"{source}: row {bad} holds a NaN or infinite value; embed it again")
    return matrix


def read_columns(shard: Shard, columns: list[str], storage_config=None) -> pa.Table:
    fs, path = storage.filesystem(shard.uri, storage_config)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def iter_vectors(
    shard: Shard, rows_per_batch: int, storage_config=None, column: str = EMBEDDING, dtype: str = "float32"
) -> Iterator[np.ndarray]:
    """A file's vectors in file order, `rows_per_batch` at a time: [rows, dim] float32 for float columns, the
    codes ([rows, dim] int8, [rows, dim/8] uint8 bits) for compact ones."""
    fs, path = storage.filesystem(shard.uri, storage_config)
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=rows_per_batch, columns=[column]):
            yield column_matrix(batch.column(0), dtype, shard.uri)


def column_matrix(column: pa.ChunkedArray | pa.Array, dtype: str, source: str) -> np.ndarray:
    """A vector column as a matrix: float32 for float dtypes (embedding_matrix), else the codes as stored."""
    if dtype not in ("int8", "binary"):
        return embedding_matrix(column, source)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise PlanError(f"{source}: {array.null_count} rows have no vector; drop them or embed them again")
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.int8 if dtype == "int8" else np.uint8, copy=False).reshape(len(array), -1)


def id_keys(ids: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Ids of one type (int64 or string, repeats allowed) -> (their distinct values sorted, the key of each id:
    its position there).

    Arrow sorts integers as numbers and strings by their UTF-8 bytes, which is code point order: Python's, and
    the order every ranking of embedrank breaks ties by (candidates.merge_partials sorts doc_id the same way).
    """
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if ids.null_count:
        raise PlanError(f"{ids.null_count} vectors have no id; every vector needs one")
    distinct = pc.unique(ids)
    distinct = distinct.take(pc.sort_indices(distinct))
    return distinct, pc.index_in(ids, value_set=distinct).to_numpy().astype(np.int64)


FINER = {"binary": ("float32", "float16", "int8"), "int8": ("float32", "float16")}  # rescoring columns, best first


def plan_search(
    files: list[VectorFile],
    *,
    dim: int,
    top_k: int,
    search: str = "auto",
    rescore: str = "auto",
    rescore_k: int = 100,
    measure_recall: bool = True,
) -> dict | None:
    """What the scoring tasks search and rescore in a corpus (whose files share one layout: check_files).

    search: auto (the `embedding` column's dtype) or a dtype the corpus holds; rescore: auto (a compact search
    is rescored with the finest other column: float32, float16, then int8), none, or a dtype. With
    measure_recall and a float column beside a compact search, the exact float top k is found as well and
    the report states the search's recall@k against it. None: the plain float search of `embedding`."""
    layout = files[0]
    dtype = layout.main_dtype if search == "auto" else search
    column = layout.column_of(dtype)
    have = ", ".join(d for _, d in layout.dtypes) or "float32"
    if column is None:
        raise PlanError(
            f"retrieve.search: {dtype}, but the corpus holds {have} vectors; embed it with "
            f"output.extra_embedding_dtypes: [{dtype}] or set retrieve.search: auto"
        )
    finer = None
    if rescore == "auto":
        finer = next((d for d in FINER.get(dtype, ()) if layout.column_of(d)), None)
    elif rescore != "none":
        if rescore not in FINER.get(dtype, ()) or not layout.column_of(rescore):
            raise PlanError(
                f"retrieve.rescore: {rescore} cannot rescore a {dtype} search of a corpus holding {have}; "
                "set retrieve.rescore: auto or none"
            )
        finer = rescore
    if finer is not None and rescore_k < top_k:
        raise PlanError(f"retrieve.rescore_k ({rescore_k}) must be at least output.top_k ({top_k})")
    float_column = layout.column_of("float32") or layout.column_of("float16")
    exact = float_column if measure_recall and dtype in FINER and float_column else None
    if dtype in ("float32", "float16") and column == EMBEDDING:
        return None
    range_json = layout.int8_range if "int8" in (dtype, finer) else None
    if range_json is None and "int8" in (dtype, finer):
        raise PlanError(f"corpus file {layout.shard.uri} holds int8 vectors without embedrank.int8_range; re-embed it")
    return {
        "dtype": dtype,
        "column": column,
        "dim": dim,
        "int8_range": range_json,
        "rescore_dtype": finer,
        "rescore_column": layout.column_of(finer) if finer else None,
        "rescore_k": rescore_k if finer else 0,
        "exact_column": exact,
    }
