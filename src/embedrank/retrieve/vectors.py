"""Vectors in, for retrieval: the committed files of an embed output, what their footers say, and their rows.

Queries and corpus are outputs of the embed job (or a nightly root: its current version). Their files are
found through the commit records (runtime/store.committed_files), never by listing folders, so a run in
progress or a killed one adds nothing. Planning reads only Parquet footers: row counts, the vector width,
and the model that made the vectors (schema metadata written by the embed job).

A corpus is cut into partitions of whole files; inside a partition every distinct document id gets a key, its
rank among the partition's sorted ids, which is what the top-k kernel (topk.py) orders ties by.
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
    if EMBEDDING in schema.names:
        kind = schema.field(EMBEDDING).type
        dim = kind.list_size if pa.types.is_fixed_size_list(kind) else None
    return VectorFile(
        shard, rows, dim, tuple(schema.names), meta.get("embedrank.model", ""), meta.get("embedrank.kind", "")
    )


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


def iter_vectors(shard: Shard, rows_per_batch: int, storage_config=None) -> Iterator[np.ndarray]:
    """A file's vectors in file order, `rows_per_batch` at a time ([rows, dim] float32)."""
    fs, path = storage.filesystem(shard.uri, storage_config)
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=rows_per_batch, columns=[EMBEDDING]):
            yield embedding_matrix(batch.column(0), shard.uri)


def id_keys(ids: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Ids (strings, repeats allowed) -> (their distinct values sorted, the key of each id: its position there).

    Arrow sorts strings by their UTF-8 bytes, which is code point order: Python's, and the order every
    ranking of embedrank breaks ties by.
    """
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    ids = ids.cast(pa.string())
    if ids.null_count:
        raise PlanError(f"{ids.null_count} vectors have no id; every vector needs one")
    distinct = pc.unique(ids)
    distinct = distinct.take(pc.sort_indices(distinct))
    return distinct, pc.index_in(ids, value_set=distinct).to_numpy().astype(np.int64)
