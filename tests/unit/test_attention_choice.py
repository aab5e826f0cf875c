"""Kernel choice by device, dtype and GPU generation, and padded SDPA never asked for GQA with a mask (CPU)."""

import pytest
import torch
import torch.nn.functional as F

from embedrank.models import attention


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA probes answering as a GPU of the given capability would, with both varlen kernels installed."""

    def install(capability):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(attention, "flash_attn_available", lambda: True)
        monkeypatch.setattr(attention, "_torch_varlen", lambda: (None, {"is_causal": True}, False, True))

    return install


def test_bf16_on_a_recent_gpu_takes_flash_attn(fake_cuda):
    fake_cuda((9, 0))
    assert attention.choose_backend("cuda", None, torch.bfloat16) == "flash_attn"
    assert attention.available_backends("cuda", torch.float16)[:2] == ["flash_attn", "torch_varlen"]


def test_fp32_or_an_older_gpu_falls_back_to_sdpa_packed(fake_cuda):
    fake_cuda((9, 0))
    assert attention.choose_backend("cuda", None, torch.float32) == "sdpa_packed"
    fake_cuda((7, 5))
    assert attention.choose_backend("cuda", None, torch.bfloat16) == "sdpa_packed"


def test_asking_for_a_varlen_kernel_in_fp32_is_one_line_naming_the_keys(fake_cuda):
    fake_cuda((9, 0))
    with pytest.raises(ValueError) as info:
        attention.choose_backend("cuda", "flash_attn", torch.float32)
    message = str(info.value)
    assert "\n" not in message and "model.dtype" in message and "model.attention" in message
    fake_cuda((7, 0))
    with pytest.raises(ValueError, match="compute capability 8.0"):
        attention.choose_backend("cuda", "torch_varlen", torch.bfloat16)


def test_padded_sdpa_repeats_kv_instead_of_gqa_with_a_mask(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    torch.manual_seed(0)
    b, hq, hkv, s, d = 2, 4, 2, 5, 8
    q, k, v = torch.randn(b, hq, s, d), torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)
    mask2d = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    layout = attention.BatchLayout(backend="sdpa_padded", mask=attention.padded_attention_mask(mask2d))
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    out, _ = attention.embedrank_attention(None, q, k, v, None, scaling=d**-0.5, embedrank_batch=layout)
    assert calls and all(not (c.get("attn_mask") is not None and c.get("enable_gqa")) for c in calls)
    want = real(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), attn_mask=layout.mask, scale=d**-0.5
    ).transpose(1, 2)
    assert torch.allclose(out, want, atol=1e-6)


def test_every_forward_entry_point_runs_without_autograd(tiny_embedding_dir):
    import numpy as np

    from embedrank import Qwen3Embedder

    emb = Qwen3Embedder.from_pretrained(tiny_embedding_dir, max_length=64)
    seqs = [np.array([1, 2, 3, 151643]), np.array([4, 151643])]
    hidden = emb._forward.run_micro_batch(seqs)
    assert not hidden.requires_grad and hidden.grad_fn is None
    pooled, _ = emb._forward(seqs)
    assert not pooled.requires_grad and pooled.grad_fn is None


def test_the_budget_counts_what_each_kernel_allocates():
    from embedrank.models.forward import kernel_extra_bytes, token_budget_for_memory

    shape = dict(q_heads=32, kv_heads=8, head_dim=128, max_length=8192)
    repeated = 2 * 24 * 128 * 4  # fp32 K and V copies for the 24 extra heads
    assert kernel_extra_bytes("sdpa_packed", device_type="cuda", elem_bytes=4, **shape) == repeated
    assert kernel_extra_bytes("sdpa_packed", device_type="cpu", elem_bytes=4, **shape) == 0  # enable_gqa there
    assert kernel_extra_bytes("sdpa_padded", device_type="cuda", elem_bytes=4, **shape) == repeated + 8192 * 5
    assert kernel_extra_bytes("flash_attn", device_type="cuda", elem_bytes=2, **shape) == 0
    assert kernel_extra_bytes("torch_varlen", device_type="cuda", elem_bytes=2, **shape) == 0
    assert kernel_extra_bytes("torch_varlen", device_type="cuda", elem_bytes=2, varlen_repeats=True, **shape) == (
        2 * 24 * 128 * 2
    )
    # 8B in fp32 with 40 GB free: the repeated K/V shrink the budget by their share of the per-token bytes.
    base = 4 * (8 * 4096 + 3 * 12288)
    plain = token_budget_for_memory(40e9, hidden=4096, intermediate=12288, elem_bytes=4, max_length=8192, cap=10**9)
    counted = token_budget_for_memory(
        40e9, hidden=4096, intermediate=12288, elem_bytes=4, max_length=8192, cap=10**9, extra_per_token=repeated
    )
    assert plain == int(0.5 * 40e9 / base) // 256 * 256
    assert counted == int(0.5 * 40e9 / (base + repeated)) // 256 * 256 and counted < plain


def test_varlen_gqa_mode_follows_the_signature_then_the_probe():
    assert attention.varlen_gqa_mode(True, None) == "enable_gqa"
    assert attention.varlen_gqa_mode(False, True) == "native"
    assert attention.varlen_gqa_mode(False, False) == "repeat"
    assert attention.varlen_gqa_mode(False, None) == "repeat"


def test_the_probe_trusts_unrepeated_kv_only_when_exact():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 8, 9, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16)

    def repeated():
        return F.scaled_dot_product_attention(
            q, k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1), is_causal=True
        )

    def refuses():  # a kernel that checks its head counts
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def pairs_heads_wrongly():  # accepts the shapes but maps query heads to the wrong K/V heads
        return F.scaled_dot_product_attention(q, k.repeat(1, 4, 1, 1), v.repeat(1, 4, 1, 1), is_causal=True)

    def native():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    assert not attention.native_gqa_exact(refuses, repeated)
    assert not attention.native_gqa_exact(pairs_heads_wrongly, repeated)
    assert attention.native_gqa_exact(native, repeated)  # SDPA's own GQA on the CPU: bit-identical
