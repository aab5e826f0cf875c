"""Exact top-k by inner product, computed in blocks: the pure tensor functions under `embedrank retrieve`.

Shapes: queries [Q, d], documents [N, d], scores [Q, N] = queries @ documents.T, in float32.

A candidate is a (score, key) pair. A key is an int64 that orders documents the way their ids do (the caller
numbers a partition's distinct ids in sorted order, retrieve/vectors.py), so that "ties broken by doc id"
becomes "ties broken by the smaller key" and no string is compared inside the loop over blocks. Several
vectors may share a key (the chunks of one document): a document scores the best of its vectors.

    block_topk(scores, k)        best k columns of each row, ties to the lower column
    merge_topk(a, b, k)          two candidate lists per row -> one; a key in both keeps its best score
    DocBlock                     a block of document vectors sorted by key, chunks of one document grouped
    RunningTopK                  the candidate lists of a set of queries while document blocks stream past

Only torch and numpy: no Ray, no I/O. Everything runs on the device of the tensors it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PAD_KEY = torch.iinfo(torch.int64).max  # an empty slot of a candidate list (fewer documents than k so far)
KEY_LIMIT = 1 << 31  # keys are below this (distinct ids of one partition): a key and a score share one int64


def ordered_bits(values: torch.Tensor) -> torch.Tensor:
    """float32 values -> int64 in the same order (IEEE bits, negatives flipped; -0.0 counts as 0.0)."""
    bits = (values.to(torch.float32) + 0.0).contiguous().view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)


def rank_code(values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """One int64 per candidate, larger = better: score descending, then key ascending. Equal codes are equal
    candidates, so torch.topk on codes needs no tie rule."""
    return (ordered_bits(values) << 32) | (KEY_LIMIT - 1 - keys.clamp(max=KEY_LIMIT - 1))


def block_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[Q, N] scores -> ([Q, k'] values, [Q, k'] columns) with k' = min(k, N), each row ordered by value
    descending, equal values by column ascending.

    torch.topk alone picks an arbitrary member of a tie. Here a row whose k-th and (k+1)-th values are equal
    (a tie across the cut, rare with real vectors) takes, of the values equal to the k-th, the lowest columns;
    the result is the same on any device.
    """
    rows, n = scores.shape
    kept = min(k, n)
    if kept == 0 or rows == 0:
        return scores.new_zeros((rows, kept)), torch.zeros((rows, kept), dtype=torch.int64, device=scores.device)
    if kept == n:
        columns = torch.arange(n, device=scores.device).expand(rows, n)
    else:
        values, columns = torch.topk(scores, kept + 1, dim=1)
        crowded = torch.nonzero(values[:, kept - 1] == values[:, kept])[:, 0]
        columns = columns[:, :kept].clone()
        if crowded.numel():
            columns[crowded] = lowest_columns_at_the_cut(scores[crowded], values[crowded, kept - 1 : kept], kept)
    values = scores.gather(1, columns)
    order = torch.topk(rank_code(values, columns), kept, dim=1).indices  # value descending, column ascending
    return values.gather(1, order), columns.gather(1, order)


def lowest_columns_at_the_cut(scores: torch.Tensor, kth: torch.Tensor, kept: int) -> torch.Tensor:
    """[R, N] scores and each row's k-th largest value [R, 1] -> [R, kept] columns: every value above it, then
    the lowest columns of the values equal to it."""
    above, tied = scores > kth, scores == kth
    need = kept - above.sum(dim=1, keepdim=True, dtype=torch.int32)
    first = torch.cumsum(tied, dim=1, dtype=torch.int32) <= need
    return torch.nonzero(above | (tied & first))[:, 1].view(len(scores), kept)  # row-major: columns ascending


def merge_topk(
    values_a: torch.Tensor,
    keys_a: torch.Tensor,
    values_b: torch.Tensor,
    keys_b: torch.Tensor,
    k: int,
    distinct: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two candidate lists per row ([Q, a] and [Q, b] values and keys) -> the best k ([Q, k]), ordered by value
    descending, then key ascending; missing places are (-inf, PAD_KEY). A key in both lists keeps its best
    value, unless `distinct` says no key can be in both (no document has several vectors)."""
    values = torch.cat([values_a, values_b], dim=1)
    keys = torch.cat([keys_a, keys_b], dim=1)
    if values.shape[1] < k:  # pad, so that every row has k places
        pad = k - values.shape[1]
        values = torch.cat([values, values.new_full((values.shape[0], pad), float("-inf"))], dim=1)
        keys = torch.cat([keys, keys.new_full((keys.shape[0], pad), PAD_KEY)], dim=1)
    if not distinct:
        # Sort by key, best value first within a key (one int64 sort), then blank the repeats of a key.
        worst_first = (1 << 32) - 1 - (ordered_bits(values) + (1 << 31))
        by_key = torch.sort((keys.clamp(max=KEY_LIMIT - 1) << 32) | worst_first, dim=1).indices
        values, keys = values.gather(1, by_key), keys.gather(1, by_key)
        repeat = torch.zeros_like(keys, dtype=torch.bool)
        repeat[:, 1:] = keys[:, 1:] == keys[:, :-1]
        empty = repeat | (keys == PAD_KEY)
        values = values.masked_fill(empty, float("-inf"))
        keys = keys.masked_fill(empty, PAD_KEY)
    best = torch.topk(rank_code(values, keys), k, dim=1).indices
    return values.gather(1, best), keys.gather(1, best)


@dataclass
class DocBlock:
    """Document vectors sorted by key, ready to score: `groups` maps each vector to its distinct key's column
    when several vectors share a key (chunks), else None."""

    vectors: torch.Tensor  # [n, d] float32, sorted by key
    keys: torch.Tensor  # [m] int64: the distinct keys, ascending (m = n without chunks)
    groups: torch.Tensor | None  # [n] int64 column of each vector among the m distinct keys

    @classmethod
    def build(cls, vectors: np.ndarray, keys: np.ndarray, device: str | torch.device, dtype=np.float32) -> DocBlock:
        """[n, d] vectors and their [n] keys (any order, repeats allowed) -> a block on `device`, as `dtype`
        (float64 where integer codes would overflow float32's exact integers: retrieve/search.py)."""
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        distinct, groups = np.unique(sorted_keys, return_inverse=True)
        tensor = torch.from_numpy(np.ascontiguousarray(vectors[order], dtype=dtype)).to(device)
        grouped = None if len(distinct) == len(sorted_keys) else torch.from_numpy(groups.astype(np.int64)).to(device)
        return cls(tensor, torch.from_numpy(distinct.astype(np.int64)).to(device), grouped)

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """[Q, d] queries -> [Q, m] scores, one column per distinct key: the best of its vectors. int8 codes
        (retrieve/search.py) give integer products (int_products)."""
        scores = int_products(queries, self.vectors) if self.vectors.dtype == torch.int8 else queries @ self.vectors.T
        if self.groups is None:
            return scores
        best = scores.new_full((scores.shape[0], len(self.keys)), float("-inf"))
        return best.scatter_reduce_(1, self.groups.expand(scores.shape[0], -1), scores, reduce="amax")


def int_products(queries: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """[Q, d] and [n, d] int8 -> [Q, n] dot products as float32: torch._int_mm (exact int32 accumulation) where
    the device takes the shapes, else a float32 product of the same integers. float32 holds them exactly up to
    2^24 (int8 codes: dim <= 1032; signs: any dim); above, only near-equal sums can round to a tie."""
    try:
        return torch._int_mm(queries, vectors.T.contiguous()).to(torch.float32)
    except (RuntimeError, AttributeError):  # e.g. CUDA wants more than 16 queries and widths that are multiples of 8
        return queries.to(torch.float32) @ vectors.to(torch.float32).T


class RunningTopK:
    """The best k (score, key) pairs of each of Q queries so far, updated block by block of documents.

    Queries are scored `query_block` rows at a time, so that a [query_block, block rows] score matrix is the
    largest thing in memory besides the inputs. The result is exact: each block's own best k per query (ties
    to the smaller key) merged into the running lists (merge_topk).
    """

    def __init__(
        self,
        queries: torch.Tensor,
        k: int,
        query_block: int = 4096,
        distinct: bool = False,
        affine: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """`distinct`: every key has one vector (no chunks), so no document can reach the lists twice.
        `affine`: ([Q] scale, [Q] offset) float64 turning each query's raw products into its scores (int8
        and binary codes, retrieve/search.py); a positive scale keeps each query's order."""
        self.queries = queries  # [Q, d] float32 (or the float form of integer codes)
        self.k = k
        self.distinct = distinct
        self.affine = affine
        self.query_block = max(1, query_block)
        rows = queries.shape[0]
        self.values = torch.full((rows, k), float("-inf"), dtype=torch.float32, device=queries.device)
        self.keys = torch.full((rows, k), PAD_KEY, dtype=torch.int64, device=queries.device)
        self.pairs_scored = 0  # (query, document vector) inner products computed

    def add(self, block: DocBlock) -> None:
        for start in range(0, self.queries.shape[0], self.query_block):
            end = min(start + self.query_block, self.queries.shape[0])
            values, columns = block_topk(block.scores(self.queries[start:end]), self.k)
            if self.affine is not None:  # only the kept k: the scale is positive, so the order is the same
                scale, offset = self.affine
                values = (values.to(torch.float64) * scale[start:end, None] + offset[start:end, None]).to(torch.float32)
            self.values[start:end], self.keys[start:end] = merge_topk(
                self.values[start:end], self.keys[start:end], values, block.keys[columns], self.k, self.distinct
            )
        self.pairs_scored += self.queries.shape[0] * block.vectors.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, key, score) of every filled place, each query's places best first."""
        filled = self.keys != PAD_KEY
        rows = torch.nonzero(filled)[:, 0]
        return (
            rows.cpu().numpy(),
            self.keys[filled].cpu().numpy(),
            self.values[filled].to(torch.float32).cpu().numpy(),
        )
