"""Qwen3Embedder against the plain published recipe, in fp32, on the shipped multilingual + code corpus."""

import numpy as np
import pytest
import torch

from embedrank import Qwen3Embedder
from embedrank.models.reference import load_reference_model, reference_embed
from embedrank.models.tokenization import load_tokenizer
from embedrank.verify import row_cosines

MAX_LENGTH = 1024  # small enough for the eager reference, small enough that long rows get truncated
PARITY = 0.99999


@pytest.fixture(scope="module")
def texts(sample_rows):
    docs = [r["text"] for r in sample_rows][:220]
    queries = [r["text"] for r in sample_rows if len(r["text"]) < 200][:40]
    return docs, queries


@pytest.fixture(scope="module")
def reference(tiny_embedding_dir):
    return load_reference_model(tiny_embedding_dir), load_tokenizer(tiny_embedding_dir)


@pytest.fixture(scope="module")
def published(reference, texts):
    """The published recipe's vectors of the sample, per dim: computed once, compared with both backends. A
    Matryoshka dimension keeps the first `dim` values of the full vector and normalises them again (the recipe's
    own definition), so the reference model runs once for every dim."""
    model, tokenizer = reference
    docs, queries = texts
    full = (
        reference_embed(model, tokenizer, docs, max_length=MAX_LENGTH),
        reference_embed(model, tokenizer, queries, kind="query", max_length=MAX_LENGTH),
    )

    def vectors(dim):
        if dim is None:
            return full
        cut = [v[:, :dim].astype(np.float64) for v in full]
        return tuple((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32) for v in cut)

    return vectors


@pytest.fixture(scope="module", params=["sdpa_packed", "sdpa_padded"])
def fast(request, tiny_embedding_dir):
    return Qwen3Embedder.from_pretrained(
        tiny_embedding_dir, device="cpu", attention=request.param, max_length=MAX_LENGTH, max_tokens_per_batch=4096
    )


@pytest.mark.parametrize("dim", [None, 64])
def test_parity_with_published_recipe(fast, published, texts, dim):
    docs, queries = texts
    assert len(docs) + len(queries) >= 200
    truncated = fast.tokenize(docs).truncated
    assert truncated.sum() >= 5, "the sample must include documents longer than max_length"
    got_docs = fast.embed(docs, dim=dim)
    got_queries = fast.embed(queries, kind="query", dim=dim)
    want_docs, want_queries = published(dim)
    assert got_docs.dtype == np.float32 and got_docs.shape == (len(docs), dim or 256)
    np.testing.assert_allclose(np.linalg.norm(got_docs, axis=1), 1.0, atol=1e-5)
    assert row_cosines(got_docs, want_docs).min() >= PARITY
    assert row_cosines(got_queries, want_queries).min() >= PARITY
    # Queries really carry the instruction: they differ from the same text as a document.
    assert row_cosines(got_queries, fast.embed(queries, dim=dim)).max() < 0.9999


def test_row_alone_equals_row_in_large_mixed_batch(fast, texts):
    docs, _ = texts
    batch = fast.embed(docs)
    assert fast.last_stats.micro_batches > 1
    for i in (0, 7, int(np.argmax([len(d) for d in docs])), len(docs) - 1):
        alone = fast.embed([docs[i]])
        assert row_cosines(alone, batch[i : i + 1])[0] >= PARITY


def test_packed_and_padded_agree_and_packing_wastes_nothing(tiny_embedding_dir, texts):
    docs, _ = texts
    packed = Qwen3Embedder.from_pretrained(tiny_embedding_dir, attention="sdpa_packed", max_length=MAX_LENGTH)
    padded = Qwen3Embedder.from_pretrained(tiny_embedding_dir, attention="sdpa_padded", max_length=MAX_LENGTH)
    assert row_cosines(packed.embed(docs), padded.embed(docs)).min() >= PARITY
    assert packed.last_stats.padding_efficiency == 1.0
    assert padded.last_stats.padding_efficiency < 1.0


def test_both_tokenizer_variants_give_identical_vectors(tiny_embedding_dir, tiny_embedding_dir_no_eot, texts):
    docs, queries = texts
    with_eot = Qwen3Embedder.from_pretrained(tiny_embedding_dir, max_length=MAX_LENGTH)
    without = Qwen3Embedder.from_pretrained(tiny_embedding_dir_no_eot, max_length=MAX_LENGTH)
    a, b = with_eot.tokenize(docs[:50]), without.tokenize(docs[:50])
    assert all(np.array_equal(x, y) for x, y in zip(a.ids, b.ids))
    np.testing.assert_array_equal(with_eot.embed(queries, kind="query"), without.embed(queries, kind="query"))
    # And the reference recipe agrees for the older tokenizer too.
    model = load_reference_model(tiny_embedding_dir_no_eot)
    want = reference_embed(model, load_tokenizer(tiny_embedding_dir_no_eot), docs[:30], max_length=MAX_LENGTH)
    assert row_cosines(without.embed(docs[:30]), want).min() >= PARITY


@pytest.mark.parametrize("which", ["with_eot", "without"])
def test_truncation_keeps_exactly_one_final_endoftext(which, tiny_embedding_dir, tiny_embedding_dir_no_eot):
    path = tiny_embedding_dir if which == "with_eot" else tiny_embedding_dir_no_eot
    emb = Qwen3Embedder.from_pretrained(path, max_length=64)
    tok = emb.tokenize(["word " * 500, "short text"])
    eot = 151643
    assert tok.lengths.tolist()[0] == 64 and tok.truncated.tolist() == [True, False]
    for ids in tok.ids:
        assert ids[-1] == eot and (ids == eot).sum() == 1


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("", "empty_text"),
        ("   \n\t", "empty_text"),
        (None, "null_text"),
        (42, "not_text"),
    ],
)
def test_bad_rows_raise_naming_the_row(embedder, bad, reason):
    with pytest.raises(ValueError, match=rf"row 2: {reason}"):
        embedder.embed(["fine", "also fine", bad])


def test_single_string_is_refused(embedder):
    with pytest.raises(ValueError, match="wrap it in a list"):
        embedder.embed("not a list")


def test_dim_out_of_range_is_refused(embedder):
    with pytest.raises(ValueError, match="dim must be between 1 and 256"):
        embedder.embed(["x"], dim=4096)


def test_empty_input_gives_empty_matrix(embedder):
    assert embedder.embed([], dim=32).shape == (0, 32)


def test_embed_tokens_equals_embed(embedder):
    texts = ["alpha beta", "gamma " * 40]
    tok = embedder.tokenize(texts)
    np.testing.assert_array_equal(embedder.embed_tokens(tok.ids, dim=32), embedder.embed(texts, dim=32))


def test_unknown_backend_names_the_choices(tiny_embedding_dir):
    with pytest.raises(ValueError, match="unknown attention backend 'magic'.*sdpa_padded"):
        Qwen3Embedder.from_pretrained(tiny_embedding_dir, attention="magic")
    with pytest.raises(ValueError, match="not available on cpu"):
        Qwen3Embedder.from_pretrained(tiny_embedding_dir, attention="flash_attn")


def test_missing_and_pickle_checkpoints_are_refused(tmp_path):
    from embedrank.models.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="no checkpoint at"):
        Qwen3Embedder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle weights"):
        Qwen3Embedder.from_pretrained(tmp_path)


def test_defaults_fp32_on_cpu(embedder):
    assert embedder.model.dtype == torch.float32 and embedder.device.type == "cpu"


def test_gpu_token_budget_follows_the_free_memory():
    from embedrank.models.forward import token_budget_for_memory

    small_model = dict(hidden=1024, intermediate=3072, elem_bytes=2, max_length=8192)  # 0.6B shape, bf16
    assert token_budget_for_memory(78 * 10**9, **small_model) == 65536  # an idle H100: the cap
    assert token_budget_for_memory(10**8, **small_model) == 8192  # never below one full-length row
    # The 8B shape with 6 GB left (a 24 GB card): per token 2 x (8 x 4096 + 3 x 12288) bytes, half the memory.
    budget = token_budget_for_memory(6 * 10**9, hidden=4096, intermediate=12288, elem_bytes=2, max_length=8192)
    assert budget == (3 * 10**9 // (2 * (8 * 4096 + 3 * 12288))) // 256 * 256 == 21504
