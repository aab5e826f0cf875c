"""The embed job's Ray Data stages: thin adapters over prepare.py, models/ and the runtime.

None has a side effect visible in the output: prepare and embed are pure, and the writer only writes under
the run's staging folder with names derived from the rows, so Ray's retries of tasks and restarts of actors
cannot duplicate a row.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema as S
from ..errors import BadShardError
from ..io.pieces import unit_pieces
from ..io.sources import iter_rows
from ..models.tokenization import cached_tokenizer
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
    storage_config,
    storage_opts: str,
    carry=None,
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
                    )
            except BadShardError as exc:
                if input_cfg.on_bad_shard != "skip":
                    raise
                yield end_of_shard(shard.key, 0, 0, list(input_cfg.passthrough), piece.index, error=str(exc))
                continue
            yield end_of_shard(
                shard.key, rows, next(state.seq) - piece.seq_base, list(input_cfg.passthrough), piece.index
            )


def embedding_array(vectors: np.ndarray, n_rows: int, rows: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """[len(rows), dim] vectors placed at `rows` of an n_rows column (zeros elsewhere: rows that are dropped)."""
    np_dtype = np.float16 if dtype == "float16" else np.float32
    dim = vectors.shape[1]
    full = np.zeros((n_rows, dim), dtype=np_dtype)
    full[rows] = vectors
    return pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), dim)


class EmbedActor(ModelActor):
    """Actor: embeds the prepared rows of each batch with Qwen3Embedder.embed_tokens. Never tokenises."""

    COLUMNS = S.EMBED_STAGE

    def __init__(self, *, embedding_dtype: str, **kwargs):
        super().__init__(**kwargs)
        self.dim = kwargs["model_cfg"].dim
        self.embedding_dtype = embedding_dtype

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
        if carried_rows.size:
            previous = np.stack(
                [np.asarray(v, np.float32) for v in batch.column(S.PREV_EMBEDDING).take(carried_rows).to_pylist()]
            )
            rows = np.concatenate([rows, carried_rows])
            vectors = np.concatenate([vectors, previous])
        embedded = np.zeros(rows_in, dtype=bool)
        embedded[model_rows] = True
        out = batch.drop_columns([S.TOKEN_IDS, S.PREV_EMBEDDING])
        out = out.append_column("embedding", embedding_array(vectors, rows_in, rows, self.embedding_dtype))
        out = out.append_column(S.EMBEDDED, pa.array(embedded))
        return self.finish_batch(with_cost_columns(out, model_rows, busy, row_cost, self.name), rows_in)


def vectors_table(part: pa.Table, *, chunked: bool, passthrough: list[str], metadata: dict) -> pa.Table:
    """The committed columns of good rows: VECTOR_COLUMNS (+ chunk columns, + passthrough columns)."""
    columns = list(S.VECTOR_COLUMNS) + (list(S.CHUNK_COLUMNS) if chunked else [])
    table = part.select(columns)
    for name in passthrough:
        table = table.append_column(name, part.column(f"{S.PASSTHROUGH_PREFIX}{name}"))
    return table.replace_schema_metadata({k: str(v) for k, v in metadata.items()})


def write_embeddings(batch: pa.Table, *, chunked: bool, passthrough: list[str], metadata: dict, **kwargs) -> pa.Table:
    """Task: stage the batch's vectors and dead letters as Parquet; returns the files' FILE_META rows."""
    S.WRITE_VECTORS_STAGE.check(batch)
    metadata = {**metadata, "embedrank.dim": batch.schema.field("embedding").type.list_size}
    return write_staged(
        batch,
        to_data=functools.partial(vectors_table, chunked=chunked, passthrough=passthrough, metadata=metadata),
        to_rejected=rejected_table,
        **kwargs,
    )
