"""How each vector dtype is searched: the matrices the top-k kernel multiplies, and the rescoring of a
compact search's best candidates.

    float32 / float16   q . d                                       exact inner products, float32
    int8                offset(q) + scale(q) * (w(q) . codes(d))   integer dot products (quantize.int8_query)
    binary              (dim - 2 * hamming(q, d)) / dim             +1/-1 products of the sign bits

Integer products are exact: int8 codes (and binary's +1/-1) are multiplied as int8 matrices with int32
accumulation (topk.int_products: torch._int_mm, else float64).

`rescore` takes each query's best `rescore_k` candidates of a compact search and scores exactly those
(query, document) pairs again with a finer column (float or int8), streaming that column's blocks once:
the usual "binary, then rescore" recipe. Only torch and numpy: no Ray, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..quantize import Int8Range, binarize, dequantize_int8, int8_query, signs
from .topk import PAD_KEY, merge_topk

PAIRS_PER_STEP = 1 << 16  # (query, vector) pairs gathered at once when rescoring


@dataclass(frozen=True)
class Encoding:
    """One vector dtype as the kernel sees it."""

    dtype: str  # float32 | float16 | int8 | binary
    dim: int
    int8_range: Int8Range | None = None

    @property
    def compute(self):
        """The numpy dtype of the matrices multiplied: int8 for codes and signs (exact integer products)."""
        return np.int8 if self.dtype in ("int8", "binary") else np.float32

    def queries(self, queries: np.ndarray, device) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """[Q, dim] float queries -> (the [Q, dim] matrix, the per-query (scale, offset) or None)."""
        q = np.asarray(queries, np.float32)
        if self.dtype == "int8":
            weights, scale, offset = int8_query(q, self.int8_range)
            return (
                torch.from_numpy(weights.astype(self.compute)).to(device),
                (torch.from_numpy(scale).to(device), torch.from_numpy(offset).to(device)),
            )
        if self.dtype == "binary":
            matrix = signs(binarize(q), self.dim, np.int8)
            rows = len(q)
            scale = torch.full((rows,), 1.0 / self.dim, dtype=torch.float64, device=device)
            return torch.from_numpy(matrix).to(device), (scale, torch.zeros(rows, dtype=torch.float64, device=device))
        return torch.from_numpy(q).to(device), None

    def docs(self, block: np.ndarray) -> np.ndarray:
        """A block as read (iter_vectors: floats, int8 codes or packed bits) -> [n, dim] in `compute`."""
        if self.dtype == "binary":
            return signs(block, self.dim, np.int8)
        return block.astype(self.compute, copy=False)


def query_floats(matrix: np.ndarray, dtype: str, rng: Int8Range | None, dim: int) -> np.ndarray:
    """Query vectors as stored -> float32 [Q, dim]: int8 codes dequantized with their file's range, sign bits
    as +1/-1 (only a binary search gives those the same ranking as their floats would)."""
    if dtype == "int8":
        return dequantize_int8(matrix, rng)
    if dtype == "binary":
        return signs(matrix, dim, np.float32)
    return np.asarray(matrix, np.float32)


def rescore(
    enc: Encoding,
    queries: np.ndarray,
    keys: torch.Tensor,
    row_keys: np.ndarray,
    blocks,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score again each query's candidates with a finer column and keep the best `top_k`.

    queries: [Q, dim] float; keys: [Q, R] candidate keys (PAD_KEY: empty); row_keys: [n] the key of each
    vector of the partition, in the order `blocks` yields them (that column's values, as iter_vectors reads
    them). A key with several vectors (chunks) scores its best one. -> ([Q, top_k] scores, [Q, top_k] keys)
    best first, ties by key."""
    device = keys.device
    q_matrix, affine = enc.queries(queries, "cpu")
    q_matrix = q_matrix.numpy()
    scale, offset = (a.numpy() for a in affine) if affine is not None else (None, None)
    cand = keys.cpu().numpy()
    q_of_pair, place = np.nonzero(cand != PAD_KEY)
    pair_key = cand[q_of_pair, place]
    order = np.argsort(pair_key, kind="stable")
    sorted_keys = pair_key[order]
    best = np.full(len(pair_key), -np.inf)
    start = 0
    for block in blocks:
        block_keys = row_keys[start : start + len(block)]
        start += len(block)
        lo = np.searchsorted(sorted_keys, block_keys, "left")
        counts = np.searchsorted(sorted_keys, block_keys, "right") - lo
        if not counts.any():
            continue
        docs = enc.docs(block)
        rows = np.repeat(np.arange(len(block)), counts)
        # each row's run of pairs in key order: lo[row], lo[row] + 1, ...
        within = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        pairs = order[np.repeat(lo, counts) + within]
        for s in range(0, len(pairs), PAIRS_PER_STEP):
            p, r = pairs[s : s + PAIRS_PER_STEP], rows[s : s + PAIRS_PER_STEP]
            qs = q_of_pair[p]
            raw = np.einsum("ij,ij->i", q_matrix[qs].astype(np.float64), docs[r].astype(np.float64))
            scores = raw * scale[qs] + offset[qs] if scale is not None else raw
            np.maximum.at(best, p, scores)
    values = np.full(cand.shape, -np.inf, np.float32)
    values[q_of_pair, place] = best.astype(np.float32)
    values_t = torch.from_numpy(values).to(device)
    empty_v = values_t[:, :0]
    empty_k = keys[:, :0]
    return merge_topk(values_t, keys, empty_v, empty_k, top_k, distinct=True)
