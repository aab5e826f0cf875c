"""What every model actor shares: loading its model, column checks, fault points, the crash guard, costs.

An actor never tokenises and has no side effect visible in the output: it adds columns to the batch it is
handed (one row out per row in), so Ray Data may restart it and hand it the same batch again.
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pyarrow as pa

from .. import schema as S
from ..testing import faults
from .crash_guard import run_guarded
from .progress import board_handle


def token_lists(column: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> list[np.ndarray]:
    """The token-id lists of `rows` as numpy views (no per-token Python objects)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy()
    flat = array.values.to_numpy()
    return [flat[offsets[i] : offsets[i + 1]] for i in rows]


def with_cost_columns(out: pa.Table, rows: np.ndarray, busy: float, row_cost: np.ndarray, actor: str) -> pa.Table:
    """Append the COST_COLUMNS: tokens computed per row (padding included), the batch's time shared by
    tokens, and the actor's name, from which the report derives padding efficiency and tokens/s per actor."""
    n = out.num_rows
    computed = np.zeros(n, dtype=np.int64)
    busy_s = np.zeros(n, dtype=np.float64)
    if rows.size:
        computed[rows] = row_cost
        busy_s[rows] = busy * row_cost / max(int(row_cost.sum()), 1)
    out = out.append_column(S.COMPUTED, pa.array(computed)).append_column(S.BUSY_S, pa.array(busy_s))
    return out.append_column(S.ACTOR, pa.array([actor] * n, pa.string()))


class ModelActor:
    """Base of the embed and rerank actors. Subclasses set COLUMNS (a schema.StageColumns) and MODEL_CLASS."""

    COLUMNS: S.StageColumns
    MODEL_CLASS = None

    def __init__(
        self,
        *,
        model_cfg,
        model_source: str,
        storage_opts: str,
        torch_threads: int | None = None,
        ledger: str | None = None,
        board: str | None = None,
        max_worker_crashes: int = 2,
    ):
        """`ledger` and `board`: names of the run's CrashLedger and ProgressBoard actors (None: none)."""
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        faults.actor_loading()
        self.model = self.model_class().from_pretrained(
            model_source,
            dtype=model_cfg.dtype,
            attention=model_cfg.attention,
            max_length=model_cfg.max_length,
            max_tokens_per_batch=model_cfg.max_tokens_per_batch,
            revision=model_cfg.revision,
            storage_options=json.loads(storage_opts),
            compile=getattr(model_cfg, "compile", "auto"),
        )
        self.ledger = None
        if ledger:
            import ray

            self.ledger = ray.get_actor(ledger)
        self.max_worker_crashes = max_worker_crashes
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.calls = 0
        self.board = board_handle(board)
        # A compiled model pays its compile time here, once per actor, with the progress line saying
        # "compiling" rather than pausing silently; the first real batch then runs at full speed.
        if self.model.compiled:
            if self.board is not None:
                self.board.actor_compiling.remote(self.name)
            self.compile_seconds = self.model.warm_up()
        if self.board is not None:
            self.board.actor_ready.remote(self.name)

    @classmethod
    def model_class(cls):
        raise NotImplementedError

    def start_batch(self, batch: pa.Table) -> None:
        self.COLUMNS.check(batch)
        faults.actor_batch(self.COLUMNS.stage, self.calls)
        self.calls += 1

    def run_model(self, batch: pa.Table, rows: np.ndarray, model_fn):
        """model_fn(rows) -> (values, costs) under the crash guard -> (rows done, values, costs, batch).

        Rows that kept killing the worker come back marked `_reject = worker_crash` in the returned batch.
        """

        def compute(subset: np.ndarray):
            faults.before_model(batch, subset)
            return model_fn(subset)

        if self.ledger is None:
            return (rows, *compute(rows), batch)
        import ray

        done, values, costs, crashed = run_guarded(
            rows,
            self.row_keys(batch),
            compute,
            begin=lambda key: ray.get(self.ledger.begin.remote(key)),
            end=self.ledger.end.remote,
            limit=self.max_worker_crashes,
        )
        if crashed.size:
            batch = self.mark_crashed(batch, crashed)
        return done, values, costs, batch

    def row_keys(self, batch: pa.Table) -> list[str]:
        """Names of the batch's rows that stay the same when Ray hands the batch over again: the jobs' shard and
        sequence number."""
        shards = batch.column(S.SHARD).to_pylist()
        return [f"{shard}/{seq}" for shard, seq in zip(shards, batch.column(S.SEQ).to_pylist())]

    def mark_crashed(self, batch: pa.Table, crashed: np.ndarray) -> pa.Table:
        """The batch with the rows that kept killing the worker dead-lettered as worker_crash."""
        reject = batch.column(S.REJECT).to_pylist()
        for row in crashed:
            reject[row] = S.WORKER_CRASH
        field = batch.schema.field(S.REJECT)
        kind = pa.string() if pa.types.is_null(field.type) else field.type
        return batch.set_column(batch.schema.get_field_index(S.REJECT), S.REJECT, pa.array(reject, kind))

    def finish_batch(self, out: pa.Table, rows_in: int) -> pa.Table:
        self.COLUMNS.check_output(out, rows_in)
        if self.board is not None:
            computed = out.column(S.COMPUTED).to_numpy()
            through_model = computed > 0
            tokens = out.column("n_tokens").to_numpy(zero_copy_only=False)[through_model]
            self.board.computed.remote(
                self.name,
                int(through_model.sum()),
                int(tokens.sum()),
                int(computed.sum()),
                float(out.column(S.BUSY_S).to_numpy().sum()),
            )
        return out
