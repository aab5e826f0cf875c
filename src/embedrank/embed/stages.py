"""The embed job's Ray Data stages: thin adapters over prepare.py, models/ and the runtime.

None has a side effect visible in the output: prepare and embed are pure, and the writer only writes under
the run's staging folder with names derived from the rows, so Ray's retries of tasks and restarts of actors
cannot duplicate a row.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema as S
from ..errors import BadShardError
from ..ids import STRING, id_array
from ..io.pieces import unit_pieces
from ..io.sources import iter_rows
from ..models.tokenization import cached_tokenizer
from ..quantize import FLOAT_DTYPES, Int8Range, column_name, encode
from ..runtime.actor import ModelActor, token_lists, with_cost_columns
from ..runtime.staging import rejected_table, write_staged
from .prepare import PreviousShard, ShardState, end_of_shard, needed_columns, prepare_rows


def prepare_shards(
    batch: dict,
    *,
    input_cfg,
    long_docs,
    model_source: str,
    revision: str | None,
    max_length: int,
    rows_per_batch: int,
    on_duplicate_id: str,
    id_type: str,
    storage_config,
    storage_opts: str,
    carry=None,
    passthrough_types: dict | None = None,
) -> Iterator[pa.Table]:
    """CPU task: read a unit of work (pieces of files, io/pieces.py) and yield prepared tables, each piece
    followed by its end marker (or, when its file breaks off and input.on_bad_shard is skip, a bad-shard marker).

    `carry` (nightly: an embed.carry.CarryPlan) names the previous version's rows of each piece's ids: a
    document whose content hash is unchanged is carried from there instead of being embedded again.
    """
    tokenizer = cached_tokenizer("embedding", model_source, revision, max_length, storage_opts)
    for units in batch["pieces"]:
        for piece in unit_pieces(units):
            shard = piece.shard
            state = ShardState(seq=itertools.count(piece.seq_base))
            if carry is not None:
                previous = carry.previous_for(piece, long_docs.mode == "chunk", storage_config)
                state.previous = PreviousShard(previous) if previous is not None else None
            rows = 0
            try:
                for raw in iter_rows(
                    shard, rows_per_batch, needed_columns(input_cfg), storage_config, piece.rows, piece.byte_range
                ):
                    rows += len(raw.rows)
                    yield prepare_rows(
                        raw,
                        shard_key=shard.key,
                        input_cfg=input_cfg,
                        long_docs=long_docs,
                        max_length=max_length,
                        tokenizer=tokenizer,
                        state=state,
                        on_duplicate_id=on_duplicate_id,
                        id_type=id_type,
                        passthrough_types=passthrough_types,
                    )
            except BadShardError as exc:
                if input_cfg.on_bad_shard != "skip":
                    raise
                passthrough = list(input_cfg.passthrough)
                yield end_of_shard(shard.key, 0, 0, passthrough, piece.index, str(exc), passthrough_types)
                continue
            yield end_of_shard(
                shard.key,
                rows,
                next(state.seq) - piece.seq_base,
                list(input_cfg.passthrough),
                piece.index,
                passthrough_types=passthrough_types,
            )


ARROW_VALUES = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(), "binary": pa.uint8()}


def embedding_array(values: np.ndarray, n_rows: int, rows: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """[len(rows), width] values of `dtype` (quantize.encode) placed at `rows` of an n_rows column (zeros
    elsewhere: rows that are dropped)."""
    arrow_type = ARROW_VALUES[dtype]
    width = values.shape[1]
    full = np.zeros((n_rows, width), dtype=arrow_type.to_pandas_dtype())
    full[rows] = values
    return pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1), arrow_type), width)


def vector_columns(
    vectors: np.ndarray, carried: np.ndarray | None, dtypes: list[str], int8_range: Int8Range | None
) -> dict[str, np.ndarray]:
    """Each vector column's values (quantize.encode) for the model's float vectors [n, dim] followed by the
    carried rows' previous values of the main column (nightly). A carried float vector is encoded like a new
    one; a carried compact one is kept as it is (its version's range is tonight's: see embed/calibrate.py)."""
    main = dtypes[0]
    out = {}
    for dtype in dtypes:
        values = encode(vectors, dtype, int8_range)
        if carried is not None and len(carried):
            if main in FLOAT_DTYPES:
                previous = encode(carried, dtype, int8_range)
            elif dtype == main:
                previous = carried.astype(values.dtype)
            else:
                raise ValueError(
                    f"output.extra_embedding_dtypes: {dtype} cannot be made for documents carried from the previous "
                    f"version, which hold only {main} vectors; set output.embedding_dtype: float32 and put {main} "
                    "in output.extra_embedding_dtypes"
                )
            values = np.concatenate([values, previous])
        out[column_name(dtype, main)] = values
    return out


class EmbedActor(ModelActor):
    """Actor: embeds the prepared rows of each batch with Qwen3Embedder.embed_tokens. Never tokenises."""

    COLUMNS = S.EMBED_STAGE

    def __init__(
        self,
        *,
        embedding_dtype: str,
        extra_embedding_dtypes: tuple[str, ...] = (),
        int8_range: str | None = None,
        **kwargs,
    ):
        """`embedding_dtype` fills `embedding`, each extra dtype `embedding_<dtype>` (quantize.column_name);
        `int8_range`: the run's Int8Range as JSON, needed when int8 is among them (embed/calibrate.py)."""
        super().__init__(**kwargs)
        self.dim = kwargs["model_cfg"].dim
        self.dtypes = [embedding_dtype, *[d for d in extra_embedding_dtypes if d != embedding_dtype]]
        self.int8_range = Int8Range.from_json(int8_range) if int8_range else None

    @classmethod
    def model_class(cls):
        from ..models.embedder import Qwen3Embedder

        return Qwen3Embedder

    def _embed(self, tokens: pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.model.embed_tokens(token_lists(tokens, rows), dim=self.dim)
        return vectors.reshape(-1, self.dim or self.model.hidden_size), self.model.last_stats.row_cost

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.start_batch(batch)
        rows_in = batch.num_rows
        good = pc.is_null(batch.column(S.REJECT)).to_numpy(zero_copy_only=False)
        carried = pc.equal(pc.fill_null(batch.column(S.CHANGE), ""), "carried").to_numpy(zero_copy_only=False)
        tokens = batch.column(S.TOKEN_IDS)
        start = time.perf_counter()
        model_rows, vectors, row_cost, batch = self.run_model(
            batch, np.flatnonzero(good & ~carried), functools.partial(self._embed, tokens)
        )
        busy = time.perf_counter() - start
        rows = model_rows
        carried_rows = np.flatnonzero(good & carried)
        previous = None
        if carried_rows.size:
            previous = np.stack(
                [np.asarray(v, np.float32) for v in batch.column(S.PREV_EMBEDDING).take(carried_rows).to_pylist()]
            )
            rows = np.concatenate([rows, carried_rows])
        embedded = np.zeros(rows_in, dtype=bool)
        embedded[model_rows] = True
        out = batch.drop_columns([S.TOKEN_IDS, S.PREV_EMBEDDING])
        # Matryoshka cut and L2 happened in the model; quantization comes last (quantize.py).
        for name, values in vector_columns(vectors, previous, self.dtypes, self.int8_range).items():
            dtype = self.dtypes[0] if name == "embedding" else name[len("embedding_") :]
            out = out.append_column(name, embedding_array(values, rows_in, rows, dtype))
        out = out.append_column(S.EMBEDDED, pa.array(embedded))
        return self.finish_batch(with_cost_columns(out, model_rows, busy, row_cost, self.name), rows_in)


def vectors_table(
    part: pa.Table,
    *,
    chunked: bool,
    passthrough: list[str],
    metadata: dict,
    id_type: str = STRING,
    chunk_id: bool = True,
) -> pa.Table:
    """The committed columns of good rows: VECTOR_COLUMNS with `id` of the run's type (ids.py) (+ extra vector
    columns, + chunk_id (unless the output's files have none) and the chunk columns, + passthrough columns)."""
    extras = [c for c in part.column_names if c.startswith("embedding_")]
    table = part.select(list(S.VECTOR_COLUMNS) + extras)
    if chunked and chunk_id:
        # One key per row, usable as a primary key: "{id}#{chunk_index}" (ids repeat across a document's chunks).
        key = pc.binary_join_element_wise(part.column("id"), part.column("chunk_index").cast(pa.string()), "#")
        table = table.append_column(S.CHUNK_ID, key)
    if chunked:
        for name in S.CHUNK_COLUMNS:
            table = table.append_column(name, part.column(name))
    table = table.set_column(0, "id", id_array(table.column("id"), id_type))
    for name in passthrough:
        table = table.append_column(name, part.column(f"{S.PASSTHROUGH_PREFIX}{name}"))
    return table.replace_schema_metadata({k: str(v) for k, v in metadata.items()})


def vector_metadata(schema: pa.Schema, int8_range: str | None) -> dict:
    """What a reader needs to use the vector columns: the model's dimensions, each column's dtype, and the
    int8 range (quantize.Int8Range as JSON) that quantizes queries the same way."""
    dtypes = {}
    for name in schema.names:
        if name == "embedding" or name.startswith("embedding_"):
            value = schema.field(name).type.value_type
            dtypes[name] = {pa.uint8(): "binary", pa.int8(): "int8", pa.float16(): "float16"}.get(value, "float32")
    size = schema.field("embedding").type.list_size
    meta = {
        "embedrank.dim": size * 8 if dtypes["embedding"] == "binary" else size,
        "embedrank.embedding_dtype": dtypes["embedding"],
        "embedrank.vector_columns": json.dumps(dtypes),
    }
    if "int8" in dtypes.values():
        meta["embedrank.int8_range"] = int8_range
    return meta


def write_embeddings(
    batch: pa.Table,
    *,
    chunked: bool,
    passthrough: list[str],
    metadata: dict,
    int8_range: str | None = None,
    id_type: str = STRING,
    chunk_id: bool = True,
    **kwargs,
) -> pa.Table:
    """Task: stage the batch's vectors and dead letters as Parquet; returns the files' FILE_META rows."""
    S.WRITE_VECTORS_STAGE.check(batch)
    metadata = {**metadata, **vector_metadata(batch.schema, int8_range)}
    to_data = functools.partial(
        vectors_table, chunked=chunked, passthrough=passthrough, metadata=metadata, id_type=id_type, chunk_id=chunk_id
    )
    return write_staged(
        batch,
        to_data=to_data,
        to_rejected=rejected_table,
        **kwargs,
    )
