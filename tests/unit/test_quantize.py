"""Compact vectors (quantize.py, retrieve/search.py) against an fp32 reference, without Ray: int8 codes and
ranges, sign bits and Hamming distances, int8 and binary+rescore retrieval against exact float32 top-10."""

import numpy as np
import pyarrow as pa
import pytest

from embedrank.quantize import (
    Int8Range,
    binarize,
    calibrate,
    dequantize_int8,
    fixed_range,
    hamming,
    int8_query,
    quantize_int8,
    signs,
)
from embedrank.retrieve.search import Encoding
from embedrank.retrieve.stages import score_partition


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_unit(rng, rows: int, dim: int) -> np.ndarray:
    return unit(rng.standard_normal((rows, dim)))


def recall_at(found: list[set], exact: list[set]) -> float:
    return float(np.mean([len(f & e) / len(e) for f, e in zip(found, exact)]))


def exact_top(queries: np.ndarray, docs: np.ndarray, k: int) -> list[set]:
    scores = queries.astype(np.float64) @ docs.astype(np.float64).T
    return [set(row) for row in np.argsort(-scores, axis=1, kind="stable")[:, :k].tolist()]


def retrieved(queries, blocks, n_docs, k, **options) -> list[set]:
    """score_partition over ids d000000.. (sorted like their row numbers) -> each query's rows."""
    ids = pa.chunked_array([pa.array([f"d{i:06d}" for i in range(n_docs)])])
    distinct, rows, keys, _, _ = score_partition(queries, ids, blocks, top_k=k, query_block=64, device="cpu", **options)
    out = [set() for _ in range(len(queries))]
    for row, key in zip(rows, keys):
        out[row].add(int(distinct[int(key)].as_py()[1:]))
    return out


def test_int8_codes_are_within_half_a_step_and_clip_outside():
    rng = np.random.default_rng(0)
    x = random_unit(rng, 500, 64)
    r = calibrate(x)
    codes = quantize_int8(x, r)
    assert codes.dtype == np.int8 and codes.min() == -128 and codes.max() == 127  # min and max hit the ends
    assert np.all(np.abs(dequantize_int8(codes, r) - x) <= r.step / 2 + 1e-6)
    outside = np.stack([r.lo - 1, r.hi + 1])
    assert quantize_int8(outside, r).tolist() == [[-128] * 64, [127] * 64]


def test_int8_range_json_round_trips_bit_for_bit():
    r = calibrate(random_unit(np.random.default_rng(1), 100, 32))
    back = Int8Range.from_json(r.to_json())
    assert back == r and back.lo.dtype == np.float32 and back.source == "calibrated"
    assert np.array_equal(back.step, r.step)
    fixed = fixed_range(8, 0.25)
    assert fixed.source == "fixed" and fixed.lo.tolist() == [-0.25] * 8
    with pytest.raises(ValueError, match="r > 0"):
        fixed_range(8, 0)


def test_int8_query_weights_give_the_dequantized_inner_product():
    rng = np.random.default_rng(2)
    docs = random_unit(rng, 300, 48)
    queries = random_unit(rng, 20, 48)
    r = calibrate(docs)
    codes = quantize_int8(docs, r)
    weights, scale, offset = int8_query(queries, r)
    approx = offset[:, None] + scale[:, None] * (weights.astype(np.int64) @ codes.astype(np.int64).T)
    reference = queries.astype(np.float64) @ dequantize_int8(codes, r).astype(np.float64).T
    assert np.abs(approx - reference).max() < 5e-3
    assert np.abs(approx - queries @ docs.T).max() < 2e-2  # and close to the fp32 score itself


def test_sign_bits_and_hamming_agree_with_the_fp32_signs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    packed = binarize(x)
    assert packed.dtype == np.uint8 and packed.shape == (50, 8)
    assert np.array_equal(signs(packed, 64), np.where(x > 0, 1, -1))
    h = hamming(packed[:5], packed)
    reference = (x[:5, None, :] > 0) != (x[None, :, :] > 0)
    assert np.array_equal(h, reference.sum(axis=2))
    s = signs(packed, 64).astype(np.int64)
    assert np.array_equal(s[:5] @ s.T, 64 - 2 * h)  # what the kernel multiplies


def test_binary_refuses_a_width_that_is_not_a_multiple_of_8():
    with pytest.raises(ValueError, match="set model.dim to a multiple of 8"):
        binarize(np.ones((2, 12), np.float32))


def test_int8_retrieval_finds_the_exact_top10_of_random_unit_vectors():
    rng = np.random.default_rng(4)
    docs, queries = random_unit(rng, 4000, 128), random_unit(rng, 100, 128)
    r = calibrate(docs)
    codes = quantize_int8(docs, r)
    blocks = [codes[i : i + 1024] for i in range(0, 4000, 1024)]
    found = retrieved(queries, iter(blocks), 4000, 10, search=Encoding("int8", 128, r))
    assert recall_at(found, exact_top(queries, docs, 10)) >= 0.95


@pytest.mark.parametrize("finer", ["float32", pytest.param("int8", marks=pytest.mark.slow)])
def test_binary_then_rescore_finds_the_exact_top10_of_random_unit_vectors(finer):
    """Isotropic random vectors are binary's worst case: the best 10 by inner product are barely apart, and
    it takes over a quarter of the corpus as rescore_k to find them (clustered vectors need far fewer, below)."""
    rng = np.random.default_rng(5)
    docs, queries = random_unit(rng, 4000, 256), random_unit(rng, 50, 256)
    r = calibrate(docs)
    packed = binarize(docs)
    finer_values = docs if finer == "float32" else quantize_int8(docs, r)
    options = dict(
        search=Encoding("binary", 256),
        rescore=(Encoding(finer, 256, r), lambda: iter([finer_values[:2500], finer_values[2500:]])),
        rescore_k=1200,
    )
    found = retrieved(queries, iter([packed[:1500], packed[1500:]]), 4000, 10, **options)
    assert recall_at(found, exact_top(queries, docs, 10)) >= 0.95


def test_binary_then_rescore_on_clustered_vectors_needs_a_short_list():
    rng = np.random.default_rng(6)
    centres = random_unit(rng, 50, 256)
    docs = unit(centres[rng.integers(0, 50, 4000)] + 0.6 * random_unit(rng, 4000, 256))
    queries = unit(centres[rng.integers(0, 50, 100)] + 0.6 * random_unit(rng, 100, 256))
    options = dict(search=Encoding("binary", 256), rescore=(Encoding("float32", 256), lambda: iter([docs])))
    found = retrieved(queries, iter([binarize(docs)]), 4000, 10, rescore_k=100, **options)
    assert recall_at(found, exact_top(queries, docs, 10)) >= 0.95


def test_rescoring_every_candidate_is_the_exact_search():
    rng = np.random.default_rng(7)
    docs, queries = random_unit(rng, 600, 64), random_unit(rng, 30, 64)
    options = dict(search=Encoding("binary", 64), rescore=(Encoding("float32", 64), lambda: iter([docs])))
    found = retrieved(queries, iter([binarize(docs)]), 600, 10, rescore_k=600, **options)
    assert found == exact_top(queries, docs, 10)
