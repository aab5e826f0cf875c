"""build_embedder: Qwen3-Embedding vectors for a text column of any Ray Dataset, as the embed job makes them.

    tokenize_texts (CPU tasks): validate each text (the job's reason codes), add the query instruction for
        kind="query", tokenise and truncate to max_length keeping the final <|endoftext|> (the job's prepare)
    EmbedderActor (actor pool): the embed job's actor model call, Qwen3Embedder.embed_tokens on length-sorted
        token-budget micro-batches, Matryoshka cut to dim and L2 normalisation; never tokenises

Added columns: embedding (fixed_size_list<float32>[dim]), n_tokens (int32), truncated (bool), and with
on_error="continue" the error column (null, or the reason code of a row the model did not take, whose other
added columns are null). Every other column passes through as it is.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..embed.stages import EmbedActor
from ..errors import ConfigError
from ..models import prompts
from ..models.tokenization import cached_tokenizer
from ..schema import StageColumns, text_problem
from .columns import (
    TOKENS,
    GuardedRows,
    add_token_columns,
    check_columns,
    model_rows,
    raise_bad_row,
    vectors_with_nulls,
)
from .configs import EmbedConfig
from .processor import Processor, check_config_type, model_config_json


def tokenize_texts(batch: pa.Table, *, config: EmbedConfig, storage_opts: str) -> pa.Table:
    """CPU task: the batch + the prompt tokens of each good row, n_tokens, truncated (+ the error column)."""
    check_columns(
        batch.column_names, needs={"text_column": config.text_column}, adds=config.added_columns(), config="EmbedConfig"
    )
    texts = batch.column(config.text_column).to_pylist()
    reasons = [text_problem(text) for text in texts]
    if config.on_error == "raise":
        for text, reason in zip(texts, reasons):
            if reason is not None:
                raise_bad_row("EmbedConfig", config.text_column, reason, text, config.error_column)
    rows = np.flatnonzero(np.fromiter((r is None for r in reasons), dtype=bool, count=len(reasons)))
    tokenizer = cached_tokenizer(
        "embedding", config.model_source, config.model.revision, config.model.max_length, storage_opts
    )
    tokens = tokenizer.tokenize_formatted(
        [prompts.embedding_text(texts[i], config.kind, config.instruction) for i in rows]
    )
    return add_token_columns(
        batch, rows=rows, ids=tokens.ids, truncated=tokens.truncated, reasons=reasons, config=config
    )


class EmbedderActor(GuardedRows, EmbedActor):
    """Actor: the embed job's model call on the rows the tokenize task prepared; adds the embedding column."""

    def __init__(self, *, config: EmbedConfig, storage_opts: str, ledger: str | None = None):
        super().__init__(
            model_cfg=config.model,
            model_source=config.model_source,
            storage_opts=storage_opts,
            torch_threads=config.embed.torch_threads,
            embedding_dtype="float32",
            ledger=ledger,
            max_worker_crashes=config.embed.max_worker_crashes,
        )
        self.config = config
        self.COLUMNS = StageColumns("embedder", (TOKENS, config.n_tokens_column), (config.embedding_column,))

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.start_batch(batch)
        rows_in = batch.num_rows
        tokens = batch.column(TOKENS)
        rows, vectors, _, batch = self.run_model(
            batch, model_rows(batch, self.config.n_tokens_column), lambda subset: self._embed(tokens, subset)
        )
        out = batch.drop_columns([TOKENS])
        out = out.append_column(self.config.embedding_column, vectors_with_nulls(vectors, rows, rows_in))
        return self.finish_batch(out, rows_in)


def build_embedder(config: EmbedConfig) -> Processor:
    """A processor adding Qwen3-Embedding vectors of `config.text_column` to any Ray Dataset.

    The model source is checked here (config.json, tokenizer files only, on the driver), and `dim` against the
    model's hidden size; the model itself loads in the actors when the Dataset runs.
    """
    check_config_type(config, EmbedConfig, "build_embedder")
    hidden = model_config_json(config, "embedding").get("hidden_size")
    if config.model.dim is not None and hidden and config.model.dim > hidden:
        raise ConfigError(
            f"EmbedConfig.model.dim: {config.model.dim} is more than the {hidden} dimensions of "
            f"{config.model_source}; set model.dim to at most {hidden}, or None for all of them"
        )
    return Processor(config, needs={"text_column": config.text_column}, tokenize=tokenize_texts, actor=EmbedderActor)
