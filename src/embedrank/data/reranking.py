"""build_reranker: Qwen3-Reranker scores for (query, document) columns of any Ray Dataset, as the rerank job.

    tokenize_pairs (CPU tasks): validate each pair (the job's reason codes), build the published prompt with
        the row's instruction, truncating only its body to max_length (the rerank job's tokenize step)
    RerankerActor (actor pool): the rerank job's actor model call, Qwen3Reranker.score_tokens, P(yes) from the
        last position in fp32; never tokenises

Added columns: score (float32), n_tokens (int32), truncated (bool), and with on_error="continue" the error
column (null, or the reason code of a pair the model did not take, whose other added columns are null).
Every other column passes through as it is.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..models.tokenization import cached_tokenizer
from ..rerank.stages import RerankActor
from ..schema import EMPTY_QUERY, StageColumns, text_problem
from .columns import TOKENS, GuardedRows, add_token_columns, check_columns, model_rows, raise_bad_row, with_nulls
from .configs import RerankConfig
from .processor import Processor, check_config_type, model_config_json

BAD_INSTRUCTION = "bad_instruction"  # the instruction column holds something other than text (or null)


def input_columns(config: RerankConfig) -> dict[str, str]:
    """config field -> the input column it names."""
    needs = {"query_column": config.query_column, "document_column": config.document_column}
    if config.instruction_column:
        needs["instruction_column"] = config.instruction_column
    return needs


def pair_problem(query, document, instruction) -> tuple[str, str] | None:
    """(the column field at fault, the reason code) of a pair the model cannot take, or None.

    The codes are the rerank job's: any unusable query is `empty_query`, a document gets its own code.
    """
    if text_problem(query) is not None:
        return "query_column", EMPTY_QUERY
    if text_problem(document) is not None:
        return "document_column", text_problem(document)
    if instruction is not None and not isinstance(instruction, str):
        return "instruction_column", BAD_INSTRUCTION
    return None


def tokenize_pairs(batch: pa.Table, *, config: RerankConfig, storage_opts: str) -> pa.Table:
    """CPU task: the batch + each good pair's prompt tokens, n_tokens, truncated (+ the error column)."""
    needs = input_columns(config)
    check_columns(batch.column_names, needs=needs, adds=config.added_columns(), config="RerankConfig")
    queries = batch.column(config.query_column).to_pylist()
    documents = batch.column(config.document_column).to_pylist()
    instructions = (
        batch.column(config.instruction_column).to_pylist() if config.instruction_column else [None] * batch.num_rows
    )
    problems = [pair_problem(q, d, i) for q, d, i in zip(queries, documents, instructions)]
    if config.on_error == "raise":
        for index, problem in enumerate(problems):
            if problem is not None:
                field, reason = problem
                column = needs[field]
                raise_bad_row("RerankConfig", column, reason, batch.column(column)[index].as_py(), config.error_column)
    rows = np.flatnonzero(np.fromiter((p is None for p in problems), dtype=bool, count=len(problems)))
    tokenizer = cached_tokenizer(
        "reranker", config.model_source, config.model.revision, config.model.max_length, storage_opts
    )
    # As the rerank job: a row's instruction, else the configured one, else (None) the published default.
    tokens = tokenizer.tokenize(
        [queries[i] for i in rows], [documents[i] for i in rows], [instructions[i] or config.instruction for i in rows]
    )
    return add_token_columns(
        batch,
        rows=rows,
        ids=tokens.ids,
        truncated=tokens.truncated,
        reasons=[p and p[1] for p in problems],
        config=config,
    )


class RerankerActor(GuardedRows, RerankActor):
    """Actor: the rerank job's model call on the pairs the tokenize task prepared; adds the score column."""

    def __init__(self, *, config: RerankConfig, storage_opts: str, ledger: str | None = None):
        super().__init__(
            model_cfg=config.model,
            model_source=config.model_source,
            storage_opts=storage_opts,
            torch_threads=config.rerank.torch_threads,
            ledger=ledger,
            max_worker_crashes=config.rerank.max_worker_crashes,
        )
        self.config = config
        self.COLUMNS = StageColumns("reranker", (TOKENS, config.n_tokens_column), (config.score_column,))

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.start_batch(batch)
        rows_in = batch.num_rows
        tokens = batch.column(TOKENS)
        rows, scores, _, batch = self.run_model(
            batch, model_rows(batch, self.config.n_tokens_column), lambda subset: self._score(tokens, subset)
        )
        out = batch.drop_columns([TOKENS])
        out = out.append_column(self.config.score_column, with_nulls(scores, rows, rows_in, pa.float32()))
        return self.finish_batch(out, rows_in)


def build_reranker(config: RerankConfig) -> Processor:
    """A processor adding Qwen3-Reranker scores of (query_column, document_column) pairs to any Ray Dataset.

    The model source is checked here (config.json, tokenizer files only, on the driver); the model itself
    loads in the actors when the Dataset runs.
    """
    check_config_type(config, RerankConfig, "build_reranker")
    model_config_json(config, "reranker")
    return Processor(config, needs=input_columns(config), tokenize=tokenize_pairs, actor=RerankerActor)
