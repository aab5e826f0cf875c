"""The rerank job's Ray Data stages: pairs from input shards, corpus rows for the join, prompt tokens, scores.

As in the embed job, no stage has a side effect visible in the output until the driver commits a shard.
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
from .pairs import corpus_rows, end_of_pairs, explode_pairs, fill_documents


def prepare_pairs(
    batch: dict, *, input_cfg, has_corpus: bool, rows_per_batch: int, storage_config, id_types: dict | None = None
) -> Iterator[pa.Table]:
    """CPU task: read whole rerank shards (a unit of work: io/pieces.py) and yield one row per pair, then an
    end-of-shard marker (a bad-shard marker instead when the file breaks off and input.on_bad_shard is skip).
    Rerank never cuts a file: duplicate pairs are found within one. `id_types`: the run's (rerank/id_types.py)."""
    for units in batch["pieces"]:
        for piece in unit_pieces(units):
            shard = piece.shard
            seen: set = set()
            seq = itertools.count()
            rows = 0
            try:
                for raw in iter_rows(shard, rows_per_batch, None, storage_config):
                    rows += len(raw.rows)
                    yield explode_pairs(
                        raw,
                        shard_key=shard.key,
                        input_cfg=input_cfg,
                        seen=seen,
                        seq=seq,
                        has_corpus=has_corpus,
                        id_types=id_types,
                    )
            except BadShardError as exc:
                if input_cfg.on_bad_shard != "skip":
                    raise
                yield end_of_pairs(shard.key, 0, 0, error=str(exc))
                continue
            yield end_of_pairs(shard.key, rows, next(seq))


def read_corpus(batch: dict, *, corpus_cfg, rows_per_batch: int, storage_config) -> Iterator[pa.Table]:
    """CPU task: corpus pieces -> (doc_id, _corpus_text) rows for the join."""
    for units in batch["pieces"]:
        for piece in unit_pieces(units):
            for raw in iter_rows(piece.shard, rows_per_batch, None, storage_config, piece.rows, piece.byte_range):
                yield corpus_rows(raw, corpus_cfg)


def tokenize_pairs(
    batch: pa.Table,
    *,
    model_source: str,
    revision: str | None,
    max_length: int,
    default_instruction: str | None,
    storage_opts: str,
) -> pa.Table:
    """CPU task: fill documents from the corpus join, then build each pair's prompt tokens."""
    batch = fill_documents(batch)
    S.TOKENIZE_PAIRS_STAGE.check(batch)
    tokenizer = cached_tokenizer("reranker", model_source, revision, max_length, storage_opts)
    rows = np.flatnonzero(pc.is_null(batch.column(S.REJECT)).to_numpy(zero_copy_only=False))
    queries = batch.column("query").take(rows).to_pylist()
    documents = batch.column("document").take(rows).to_pylist()
    instructions = [i or default_instruction for i in batch.column("instruction").take(rows).to_pylist()]
    tokens = tokenizer.tokenize(queries, documents, instructions)
    seqs: list = [np.zeros(0, np.int32)] * batch.num_rows
    truncated = np.zeros(batch.num_rows, dtype=bool)
    for i, ids in zip(rows, tokens.ids):
        seqs[i] = ids.astype(np.int32)
    truncated[rows] = tokens.truncated
    out = batch.drop_columns(["query", "document", "instruction"])
    out = out.append_column(S.TOKEN_IDS, S.list_array(seqs))
    out = out.append_column("n_tokens", pa.array([len(s) for s in seqs], pa.int32()))
    return out.append_column("truncated", pa.array(truncated))


class RerankActor(ModelActor):
    """Actor: scores the prompt tokens of each batch with Qwen3Reranker.score_tokens. Never tokenises."""

    COLUMNS = S.RERANK_STAGE

    @classmethod
    def model_class(cls):
        from ..models.reranker import Qwen3Reranker

        return Qwen3Reranker

    def _score(self, tokens: pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model.score_tokens(token_lists(tokens, rows)), self.model.last_stats.row_cost

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.start_batch(batch)
        rows_in = batch.num_rows
        good = pc.is_null(batch.column(S.REJECT)).to_numpy(zero_copy_only=False)
        start = time.perf_counter()
        rows, scores, row_cost, batch = self.run_model(
            batch, np.flatnonzero(good), functools.partial(self._score, batch.column(S.TOKEN_IDS))
        )
        busy = time.perf_counter() - start
        full = np.zeros(rows_in, dtype=np.float32)
        full[rows] = scores
        out = batch.drop_columns([S.TOKEN_IDS]).append_column("score", pa.array(full))
        return self.finish_batch(with_cost_columns(out, rows, busy, row_cost, self.name), rows_in)


def score_table(part: pa.Table) -> pa.Table:
    return part.select(list(S.SCORE_COLUMNS))


def write_scores(batch: pa.Table, **kwargs) -> pa.Table:
    """Task: stage scored pairs and dead letters (ranked later, per shard, at commit)."""
    S.WRITE_SCORES_STAGE.check(batch)
    return write_staged(
        batch,
        to_data=score_table,
        to_rejected=functools.partial(rejected_table, id_columns=("query_id", "doc_id")),
        **kwargs,
    )
