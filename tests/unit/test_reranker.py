"""Qwen3Reranker against the plain published recipe (full LM head, last position, log-softmax), fp32."""

import numpy as np
import pytest

from embedrank.models.reference import load_reference_model, reference_rerank
from embedrank.models.reranker import Qwen3Reranker
from embedrank.models.tokenization import load_tokenizer

MAX_LENGTH = 256


@pytest.fixture(scope="module")
def pairs(sample_rows):
    queries = [r["text"][:120] for r in sample_rows if len(r["text"]) < 300][:20]
    docs = [r["text"][:1500] for r in sample_rows]  # long enough to be truncated, short enough for the full LM head
    qs, ds = [], []
    for qi, q in enumerate(queries):
        for j in range(12):
            qs.append(q)
            ds.append(docs[(qi * 12 + j) % len(docs)])
    return qs, ds


@pytest.fixture(scope="module")
def reranker(tiny_reranker_dir):
    return Qwen3Reranker.from_pretrained(tiny_reranker_dir, max_length=MAX_LENGTH, max_tokens_per_batch=4096)


@pytest.fixture(scope="module")
def reference_scores(tiny_reranker_dir, pairs):
    model = load_reference_model(tiny_reranker_dir, causal_lm=True)
    qs, ds = pairs
    return reference_rerank(model, load_tokenizer(tiny_reranker_dir), qs, ds, max_length=MAX_LENGTH)


def test_parity_and_ranking_with_published_recipe(reranker, pairs, reference_scores):
    qs, ds = pairs
    assert len(qs) >= 200
    tokens = reranker.prompt_tokenizer.tokenize(qs, ds)
    assert tokens.truncated.sum() >= 10, "the sample must include documents that get truncated"
    got = reranker.score(qs, ds)
    assert got.dtype == np.float32 and ((got >= 0) & (got <= 1)).all()
    assert np.abs(got - reference_scores).max() <= 1e-5
    assert got.std() > 0.01, "random weights should still spread the scores"
    for start in range(0, len(qs), 12):
        assert np.array_equal(
            np.argsort(-got[start : start + 12], kind="stable"),
            np.argsort(-reference_scores[start : start + 12], kind="stable"),
        )


def test_prefix_and_suffix_survive_truncation(reranker):
    tok = reranker.prompt_tokenizer
    ids = tok.tokenize(["q"], ["word " * 5000]).ids[0]
    assert len(ids) == MAX_LENGTH
    assert np.array_equal(ids[: len(tok.prefix)], tok.prefix)
    assert np.array_equal(ids[-len(tok.suffix) :], tok.suffix)
    im_end = 151645
    assert (ids == im_end).sum() == 2  # one closing the system turn, one closing the user turn
    assert ids[-1] != 151643


def test_both_tokenizer_variants_give_the_same_scores(tiny_reranker_dir_eot, reranker, pairs):
    qs, ds = pairs
    other = Qwen3Reranker.from_pretrained(tiny_reranker_dir_eot, max_length=MAX_LENGTH)
    np.testing.assert_array_equal(other.score(qs[:40], ds[:40]), reranker.score(qs[:40], ds[:40]))


def test_pair_alone_equals_pair_in_large_mixed_batch(reranker, pairs):
    qs, ds = pairs
    batch = reranker.score(qs, ds)
    assert reranker.last_stats.micro_batches > 1
    for i in (0, 17, 101, len(qs) - 1):
        assert abs(reranker.score([qs[i]], [ds[i]])[0] - batch[i]) <= 1e-6


def test_instruction_changes_scores(reranker, pairs):
    qs, ds = pairs
    default = reranker.score(qs[:12], ds[:12])
    custom = reranker.score(qs[:12], ds[:12], instruction="Judge whether the code answers the question")
    assert np.abs(default - custom).max() > 1e-4


def test_bad_pairs_raise(reranker):
    with pytest.raises(ValueError, match="pair 1: document is empty_text"):
        reranker.score(["a", "b"], ["doc", "  "])
    with pytest.raises(ValueError, match="2 queries but 1 documents"):
        reranker.score(["a", "b"], ["doc"])
