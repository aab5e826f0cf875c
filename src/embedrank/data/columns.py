"""The columns a processor reads, adds and hands from its tokenize tasks to its model actors.

A processor never overwrites a column of the user's dataset and never leaves its own internal column behind:
the tokenize tasks add TOKENS and the row columns (n_tokens, truncated, the error column), the model actors
replace TOKENS with the model's output column. Every added column is null in the rows the model did not take.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import PlanError, UserError
from ..schema import WORKER_CRASH, list_array

TOKENS = "_embedrank_token_ids"  # internal: the row's prompt tokens, from the tokenize task to the actor


class BadRowError(UserError, ValueError):
    """on_error="raise": a row the model cannot take (null, empty or not text), named with its column."""


def shown_columns(names: Sequence[str]) -> str:
    names = list(names)
    return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") or "none"


def check_columns(names: Sequence[str], *, needs: dict[str, str], adds: dict[str, str], config: str) -> None:
    """Refuse a dataset that lacks a column the processor reads or already holds one it would add.

    needs / adds: config field -> column name, so that the message names the field to set.
    """
    names = list(names)
    for field, column in needs.items():
        if column not in names:
            raise PlanError(
                f"{config}.{field}: the dataset has no column {column!r} (columns: "
                f"{shown_columns(names)}); set {field} to the column that holds it"
            )
    for field, column in adds.items():
        if column in names:
            raise PlanError(
                f"{config}.{field}: the dataset already has a column {column!r}; set {field} to "
                "another name (a processor never overwrites a column)"
            )
    if TOKENS in names:
        raise PlanError(
            f"{config}: the dataset has a column {TOKENS!r}, the name the processor uses between "
            "its stages; rename that column first (ds.rename_columns)"
        )


def raise_bad_row(config: str, column: str, reason: str, value, error_column: str) -> None:
    shown = repr(value) if not isinstance(value, str) or len(value) < 40 else repr(value[:40]) + "..."
    raise BadRowError(
        f"{config}: column {column!r} has a row with {reason} ({shown}); drop or fix such rows "
        f"before the processor, or set on_error='continue' to get their reason in {error_column!r}"
    )


def with_nulls(values: np.ndarray, rows: np.ndarray, n: int, kind: pa.DataType) -> pa.Array:
    """`values` placed at `rows` of an n-row column, null in every other row."""
    full = np.zeros(n, dtype=kind.to_pandas_dtype())
    full[rows] = values
    present = np.zeros(n, dtype=bool)
    present[rows] = True
    return pa.array(full, kind, mask=~present)


def vectors_with_nulls(vectors: np.ndarray, rows: np.ndarray, n: int) -> pa.FixedSizeListArray:
    """[len(rows), dim] float32 vectors placed at `rows` of an n-row fixed_size_list column, null elsewhere
    (never a zero vector that a reader could take for a real one)."""
    dim = vectors.shape[1]
    full = np.zeros((n, dim), dtype=np.float32)
    full[rows] = vectors
    present = np.zeros(n, dtype=bool)
    present[rows] = True
    return pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1), pa.float32()), dim, mask=pa.array(~present))


def add_token_columns(
    batch: pa.Table,
    *,
    rows: np.ndarray,
    ids: list[np.ndarray],
    truncated: np.ndarray,
    reasons: list[str | None],
    config,
) -> pa.Table:
    """The tokenize task's output: the batch + TOKENS, n_tokens, truncated (+ the error column)."""
    n = batch.num_rows
    seqs: list[np.ndarray] = [np.zeros(0, np.int32)] * n
    for row, seq in zip(rows, ids):
        seqs[row] = seq.astype(np.int32)
    lengths = np.fromiter((len(s) for s in ids), dtype=np.int32, count=len(ids))
    out = batch.append_column(TOKENS, list_array(seqs))
    out = out.append_column(config.n_tokens_column, with_nulls(lengths, rows, n, pa.int32()))
    out = out.append_column(config.truncated_column, with_nulls(np.asarray(truncated, bool), rows, n, pa.bool_()))
    if config.on_error == "continue":
        out = out.append_column(config.error_column, pa.array(reasons, pa.string()))
    return out


def model_rows(batch: pa.Table, n_tokens_column: str) -> np.ndarray:
    """The rows the tokenize task prepared for the model (the others have a null n_tokens)."""
    return np.flatnonzero(pc.is_valid(batch.column(n_tokens_column)).to_numpy(zero_copy_only=False))


class GuardedRows:
    """The crash guard's hooks for the processors' actors (runtime/crash_guard.py): a user's Dataset has no shard
    or sequence numbers, so a row is named by a hash of its prompt tokens (and its place among equal rows of
    the batch), which stays the same when Ray hands the batch over again. A row that keeps killing the actor
    gets `worker_crash` in the error column, or stops the Dataset with on_error="raise"."""

    def row_keys(self, batch: pa.Table) -> list[str]:
        from ..runtime.actor import token_lists

        seen: dict[str, int] = {}
        keys = []
        for tokens in token_lists(batch.column(TOKENS), np.arange(batch.num_rows)):
            digest = hashlib.blake2b(np.ascontiguousarray(tokens).tobytes(), digest_size=12).hexdigest()
            seen[digest] = seen.get(digest, -1) + 1
            keys.append(f"row:{digest}:{seen[digest]}")
        return keys

    def mark_crashed(self, batch: pa.Table, crashed: np.ndarray) -> pa.Table:
        config = self.config
        if config.on_error == "raise":
            raise BadRowError(
                f"{type(config).__name__}: a row killed the model actor {self.max_worker_crashes} times "
                f"({WORKER_CRASH}); drop it, or set on_error='continue' to get {WORKER_CRASH} in "
                f"{config.error_column!r}"
            )
        errors = batch.column(config.error_column).to_pylist()
        for row in crashed:
            errors[row] = WORKER_CRASH
        index = batch.schema.get_field_index(config.error_column)
        return batch.set_column(index, config.error_column, pa.array(errors, pa.string()))
