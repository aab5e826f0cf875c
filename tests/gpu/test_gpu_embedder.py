"""GPU parity: bf16 packed varlen against the fp32 published recipe, and batch invariance under packing."""

import numpy as np
import pytest
import torch

from embedrank import Qwen3Embedder
from embedrank.models.attention import available_backends
from embedrank.models.reference import load_reference_model, reference_embed
from embedrank.models.tokenization import load_tokenizer
from embedrank.verify import row_cosines

pytestmark = pytest.mark.gpu
MAX_LENGTH = 4096
BF16_PARITY = 0.999


def packed_backends():
    if not torch.cuda.is_available():
        return ["torch_varlen"]
    return [b for b in available_backends("cuda") if b in ("flash_attn", "torch_varlen")]


@pytest.fixture(scope="module")
def texts(sample_rows):
    return [r["text"] for r in sample_rows][:200]


@pytest.fixture(scope="module")
def fp32_reference(tiny_embedding_dir, texts):
    model = load_reference_model(tiny_embedding_dir, device="cuda", attn_implementation="sdpa")
    return reference_embed(model, load_tokenizer(tiny_embedding_dir), texts, max_length=MAX_LENGTH)


@pytest.mark.parametrize("backend", packed_backends())
def test_bf16_packed_matches_fp32_recipe(tiny_embedding_dir, texts, fp32_reference, backend):
    emb = Qwen3Embedder.from_pretrained(tiny_embedding_dir, device="cuda", attention=backend, max_length=MAX_LENGTH)
    assert emb.model.dtype == torch.bfloat16
    got = emb.embed(texts)
    assert np.isfinite(got).all()
    assert row_cosines(got, fp32_reference).min() >= BF16_PARITY


@pytest.mark.parametrize("backend", packed_backends())
def test_packed_equals_padded_sdpa(tiny_embedding_dir, texts, backend):
    packed = Qwen3Embedder.from_pretrained(tiny_embedding_dir, device="cuda", attention=backend, max_length=MAX_LENGTH)
    padded = Qwen3Embedder.from_pretrained(
        tiny_embedding_dir, device="cuda", attention="sdpa_padded", max_length=MAX_LENGTH
    )
    assert row_cosines(packed.embed(texts), padded.embed(texts)).min() >= BF16_PARITY


@pytest.mark.parametrize("backend", packed_backends())
def test_batch_invariance_under_packing(tiny_embedding_dir, texts, backend):
    emb = Qwen3Embedder.from_pretrained(tiny_embedding_dir, device="cuda", attention=backend, max_length=MAX_LENGTH)
    batch = emb.embed(texts)
    for i in (0, 5, 99, len(texts) - 1):
        assert row_cosines(emb.embed([texts[i]]), batch[i : i + 1])[0] >= BF16_PARITY


def test_fp32_packed_matches_recipe_tightly(tiny_embedding_dir, texts, fp32_reference):
    # The varlen kernels take bf16/fp16 only: fp32 on CUDA picks sdpa_packed by itself.
    emb = Qwen3Embedder.from_pretrained(tiny_embedding_dir, device="cuda", dtype="fp32", max_length=MAX_LENGTH)
    assert emb.backend == "sdpa_packed"
    # TF32 matmuls stay off by default in torch, so fp32 on GPU is held to a tight bound.
    assert row_cosines(emb.embed(texts), fp32_reference).min() >= 0.9999
