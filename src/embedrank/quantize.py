"""Compact vectors: int8 with per-dimension ranges and sign-bit binary, as pure numpy functions.

    Int8Range             per-dimension [lo, hi] of the int8 codes: calibrated on a sample, or a fixed [-r, r]
    quantize_int8(x, r)   [n, d] float -> [n, d] int8 codes: 256 even steps from lo to hi, clipped outside
    dequantize_int8(c, r) the codes' step centres back as float32
    int8_query(q, r)      a float query as int8 weights with a scale and an offset, so that
                          q . dequantize(c) ~= offset + scale * (weights . c): an integer dot product ranks
    binarize(x)           [n, d] float -> [n, d/8] uint8: the sign bits (x > 0 is 1), np.packbits order
    signs(p, d)           packed bits -> [n, d] of +1/-1; signs(a) . signs(b) = d - 2 * hamming(a, b)
    hamming(a, b)         [Q, N] Hamming distances of packed rows (the reference; retrieval uses signs)
    encode(x, dtype, r)   a float vector matrix in any output dtype (float32, float16, int8, binary)

The order of the steps is fixed: the Matryoshka cut and the L2 normalisation happen first (the model does
them), quantization last, so an int8 or binary column is the compact form of the float column beside it.
The binary form is the one sentence-transformers' `quantize_embeddings(..., "ubinary")` and FAISS's
`IndexBinaryFlat` use. No Ray, no torch, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = ("float32", "float16")
COMPACT_DTYPES = ("int8", "binary")
DTYPES = FLOAT_DTYPES + COMPACT_DTYPES
LEVELS = 255  # steps between lo and hi: codes -128..127


def column_name(dtype: str, main_dtype: str) -> str:
    """Name of the vector column holding `dtype`: `embedding` for the output's own dtype, else `embedding_<dtype>`."""
    return "embedding" if dtype == main_dtype else f"embedding_{dtype}"


def bytes_per_vector(dtype: str, dim: int) -> int:
    return {"float32": 4 * dim, "float16": 2 * dim, "int8": dim, "binary": dim // 8}[dtype]


def check_binary_dim(dim: int) -> None:
    if dim % 8:
        raise ValueError(
            f"binary vectors pack 8 dimensions per byte, and {dim} is not a multiple of 8: set model.dim to a "
            f"multiple of 8 (e.g. {max(8, dim - dim % 8)})"
        )


@dataclass(frozen=True)
class Int8Range:
    """Per-dimension ranges of int8 codes. `source`: calibrated (min and max of a sample) or fixed ([-r, r])."""

    lo: np.ndarray  # [d] float32
    hi: np.ndarray  # [d] float32, > lo
    source: str = "calibrated"

    @property
    def step(self) -> np.ndarray:
        return ((self.hi.astype(np.float64) - self.lo) / LEVELS).astype(np.float32)

    @property
    def dim(self) -> int:
        return len(self.lo)

    def to_dict(self) -> dict:
        # float32 -> Python float is exact, and JSON keeps a double exactly: the range round-trips bit for bit.
        return {"source": self.source, "lo": self.lo.tolist(), "hi": self.hi.tolist()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> Int8Range:
        lo, hi = np.asarray(d["lo"], np.float32), np.asarray(d["hi"], np.float32)
        if lo.shape != hi.shape or lo.ndim != 1 or not np.all(hi > lo):
            raise ValueError("an int8 range needs lo and hi of one length with hi > lo in every dimension")
        return cls(lo, hi, d.get("source", "calibrated"))

    @classmethod
    def from_json(cls, text: str) -> Int8Range:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other) -> bool:
        return isinstance(other, Int8Range) and np.array_equal(self.lo, other.lo) and np.array_equal(self.hi, other.hi)

    __hash__ = None


MIN_WIDTH = 1e-6  # a dimension constant over the whole sample still gets a usable step


def calibrate(vectors: np.ndarray) -> Int8Range:
    """[n, d] float vectors (n >= 1) -> each dimension's min and max (the sentence-transformers rule)."""
    x = np.asarray(vectors, np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError("int8 calibration needs at least one vector")
    lo, hi = x.min(axis=0), x.max(axis=0)
    hi = np.maximum(hi, lo + np.float32(MIN_WIDTH))
    return Int8Range(lo.astype(np.float32), hi.astype(np.float32), "calibrated")


def fixed_range(dim: int, r: float) -> Int8Range:
    """[-r, r] in every dimension: reproducible without a sample (a unit vector's values lie in [-1, 1])."""
    if not r > 0:
        raise ValueError(f"a fixed int8 range needs r > 0, got {r}")
    return Int8Range(np.full(dim, -r, np.float32), np.full(dim, r, np.float32), "fixed")


def quantize_int8(vectors: np.ndarray, rng: Int8Range) -> np.ndarray:
    """[n, d] float -> [n, d] int8: code c stands for lo + (c + 128) steps, the nearest; values outside clip."""
    x = np.asarray(vectors, np.float32)
    if x.shape[-1] != rng.dim:
        raise ValueError(f"vectors have {x.shape[-1]} dimensions, the int8 range {rng.dim}")
    codes = np.rint((x - rng.lo) / rng.step) - 128
    return np.clip(codes, -128, 127).astype(np.int8)


def dequantize_int8(codes: np.ndarray, rng: Int8Range) -> np.ndarray:
    """[n, d] int8 codes -> float32 values (lo + (code + 128) steps)."""
    return (rng.lo + (codes.astype(np.float32) + 128) * rng.step).astype(np.float32)


def int8_query(queries: np.ndarray, rng: Int8Range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[Q, d] float queries -> (int8 weights [Q, d], scale [Q], offset [Q]) with
    q . dequantize_int8(c) ~= offset + scale * (weights . c) for any codes c.

    Since dequantize(c) = base + step * c with base = lo + 128 * step, q . dequantize(c) = q . base +
    (q * step) . c: the per-query weights q * step are rounded to int8 with one scale per query. The integer
    dot product orders a query's documents the way the approximate float score does."""
    q = np.asarray(queries, np.float64)
    step = rng.step.astype(np.float64)
    base = rng.lo.astype(np.float64) + 128 * step
    weights = q * step
    top = np.abs(weights).max(axis=1) if len(q) else np.zeros(0)
    scale = np.where(top > 0, top / 127, 1.0)
    codes = np.clip(np.rint(weights / scale[:, None]), -127, 127).astype(np.int8)
    return codes, scale.astype(np.float64), (q @ base).astype(np.float64)


def binarize(vectors: np.ndarray) -> np.ndarray:
    """[n, d] float -> [n, d/8] uint8 sign bits (x > 0 is 1, first dimension in the high bit)."""
    x = np.asarray(vectors)
    check_binary_dim(x.shape[-1])
    return np.packbits(x > 0, axis=-1)


def signs(packed: np.ndarray, dim: int | None = None, dtype=np.int8) -> np.ndarray:
    """[n, d/8] packed bits -> [n, d] of +1 / -1."""
    bits = np.unpackbits(np.asarray(packed, np.uint8), axis=-1)
    if dim is not None:
        bits = bits[..., :dim]
    return (bits.astype(dtype) * 2 - 1).astype(dtype)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[Qa, d/8] and [N, d/8] packed rows -> [Qa, N] int64 Hamming distances (a reference: memory Q x N x d/8)."""
    return np.unpackbits(np.bitwise_xor(a[:, None, :], b[None, :, :]), axis=-1).sum(axis=-1, dtype=np.int64)


def encode(vectors: np.ndarray, dtype: str, rng: Int8Range | None = None) -> np.ndarray:
    """L2-normalised float vectors [n, d] as `dtype`: float32 / float16 values, int8 codes or packed bits."""
    if dtype == "float32":
        return np.asarray(vectors, np.float32)
    if dtype == "float16":
        return np.asarray(vectors, np.float16)
    if dtype == "int8":
        if rng is None:
            raise ValueError("int8 vectors need an int8 range (output.int8_range)")
        return quantize_int8(vectors, rng)
    if dtype == "binary":
        return binarize(vectors)
    raise ValueError(f"unknown embedding dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def width(dtype: str, dim: int) -> int:
    """Values per row of a `dtype` column for `dim`-dimensional vectors."""
    return dim // 8 if dtype == "binary" else dim
