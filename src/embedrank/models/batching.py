"""Length-sorted, token-budget micro-batches: pure functions over sequence lengths.

Nothing here knows about torch, models or Ray. Two layouts are supported:

- packed: sequences are concatenated end to end; a batch costs the sum of its lengths, and
  `cu_seqlens` (cumulative lengths, starting at 0) tells the attention kernel where each one starts;
- padded: sequences are left-padded to the longest in the batch; a batch costs
  `len(batch) * max(len)`, padding included, which is why sorting by length first matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LAYOUTS = ("packed", "padded")


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices that sort `lengths` ascending; stable, so equal lengths keep input order."""
    return np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")


def inverse_permutation(order: Sequence[int]) -> np.ndarray:
    """`inv` such that `sorted_values[inv] == original_values` when `sorted_values = values[order]`."""
    order = np.asarray(order, dtype=np.int64)
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size, dtype=np.int64)
    return inv


def micro_batches(
    lengths: Sequence[int],
    max_tokens: int,
    *,
    layout: str = "packed",
    max_rows: int | None = None,
) -> list[np.ndarray]:
    """Cut the rows into length-sorted micro-batches whose cost stays within `max_tokens`.

    Returns arrays of row indices into `lengths`; every row appears in exactly one batch. A single row longer
    than the budget forms a batch of its own (it must still be embedded). In padded layout the cost counts
    padding: rows are visited in ascending length, so the newest row is always the longest.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    lens = np.asarray(lengths, dtype=np.int64)
    if lens.size and lens.min() < 1:
        raise ValueError("every sequence needs at least one token")
    order = length_order(lens)
    batches: list[np.ndarray] = []
    start = 0
    used = 0
    for pos in range(order.size):
        n = int(lens[order[pos]])
        rows = pos - start + 1
        cost = rows * n if layout == "padded" else used + n
        too_many = max_rows is not None and rows > max_rows
        if pos > start and (cost > max_tokens or too_many):
            batches.append(order[start:pos])
            start, used = pos, n
        else:
            used += n
    if start < order.size:
        batches.append(order[start:])
    return batches


def cu_seqlens(lengths: Sequence[int]) -> np.ndarray:
    """Cumulative sequence lengths `[0, l0, l0+l1, ...]` (int32, as varlen kernels want them)."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    out[1:] = np.cumsum(np.asarray(lengths, dtype=np.int64))
    return out.astype(np.int32)


def pack(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate token sequences: returns (flat ids, position ids restarting at 0, cu_seqlens)."""
    lengths = [len(s) for s in sequences]
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if sequences else np.zeros(0, np.int64)
    bounds = cu_seqlens(lengths)
    positions = np.arange(flat.size, dtype=np.int64) - np.repeat(bounds[:-1].astype(np.int64), lengths)
    return flat, positions, bounds


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad to the longest sequence: returns (ids [B, S], attention mask [B, S]); last column is real."""
    width = max((len(s) for s in sequences), default=0)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq) :] = seq
            mask[row, width - len(seq) :] = 1
    return ids, mask


def padding_efficiency(batches: Sequence[Sequence[int]], lengths: Sequence[int], layout: str) -> float:
    """Real tokens / computed tokens over a set of batches (1.0 when packed)."""
    lens = np.asarray(lengths, dtype=np.int64)
    real = sum(int(lens[b].sum()) for b in batches)
    if layout == "packed":
        computed = real
    else:
        computed = sum(int(lens[b].max()) * len(b) for b in batches if len(b))
    return real / computed if computed else 1.0
