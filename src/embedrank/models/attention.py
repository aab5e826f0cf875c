"""The one place that picks the attention kernel.

Order of preference: flash-attn's varlen kernel (CUDA, packed) > PyTorch's own
`torch.nn.attention.varlen.varlen_attn` (CUDA, packed) > SDPA. On the CPU the default is `sdpa_packed`: the
projections and MLPs run on packed tokens with no padding at all, and attention runs per sequence through
SDPA, which on the CPU measured faster than length-bucketed padding (see BENCHMARKS.md); `sdpa_padded`
(length-bucketed, left-padded) stays available everywhere. The network itself is transformers' own Qwen3:
the kernel plugs in through `transformers.AttentionInterface` under the name `embedrank`, and reads how the
batch is laid out from the `embedrank_batch` keyword that the model forwards to every attention call. The
packed kernels run inside one custom op (`embedrank::packed_attention`) with a fake implementation, so that a
compiled decoder layer (compiler.py) treats them as one opaque call of known output shape.

fp32 on CUDA (no varlen kernel takes it) runs `sdpa_packed` with the K/V heads repeated, so that SDPA's
memory-efficient kernel runs rather than the math one (Hq x S^2 fp32 scores per row); torch's varlen kernel
without `enable_gqa` gets un-repeated K/V only where a one-time probe on the device finds that exact.

Override with `attention=` on the model classes or the EMBEDRANK_ATTENTION environment variable.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("flash_attn", "torch_varlen", "sdpa_packed", "sdpa_padded")
PACKED_BACKENDS = ("flash_attn", "torch_varlen", "sdpa_packed")
ATTN_IMPLEMENTATION = "embedrank"
ENV_OVERRIDE = "EMBEDRANK_ATTENTION"


@dataclass(frozen=True)
class BatchLayout:
    """How the tokens of one forward pass are laid out, for the attention kernel.

    packed: `cu_seqlens` (int32 [n+1], on the model's device) and the same boundaries on the host, `cu_host`
    (so that no kernel needs a device-to-host sync to find them). Both are tensors, not Python ints: a compiled
    layer then sees one graph whatever the lengths (an int would be specialised and recompile per value).
    padded: `mask` is a bool [B, 1, S, S] tensor: True where a query may attend to a key.
    """

    backend: str
    cu_seqlens: torch.Tensor | None = None
    cu_host: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@functools.cache
def flash_attn_available() -> bool:
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def _torch_varlen():
    """(function, extra kwargs for causal, gqa supported) or None. The signature moved between releases."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:  # torch 2.10
        causal = {"is_causal": True}
    elif "window_size" in params:  # later releases: (-1, 0) = everything to the left
        causal = {"window_size": (-1, 0)}
    else:
        return None
    return varlen_attn, causal, "enable_gqa" in params, "scale" in params


VARLEN_DTYPES = (torch.float16, torch.bfloat16)  # flash-attn's and torch's varlen kernels take only these


def varlen_supported(device: torch.device, dtype: torch.dtype | None) -> bool:
    """The varlen kernels need CUDA sm80+ (Ampere or newer) and fp16/bf16 weights."""
    if device.type != "cuda" or (dtype is not None and dtype not in VARLEN_DTYPES):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def available_backends(device: torch.device | str, dtype: torch.dtype | None = None) -> list[str]:
    """The backends usable on `device` with weights in `dtype` (None: whatever the default dtype is)."""
    device = torch.device(device)
    found = []
    if varlen_supported(device, dtype):
        if flash_attn_available():
            found.append("flash_attn")
        if _torch_varlen() is not None:
            found.append("torch_varlen")
    found += ["sdpa_packed", "sdpa_padded"]
    return found


def choose_backend(device: torch.device | str, requested: str | None = None, dtype: torch.dtype | None = None) -> str:
    """The backend to use on `device`: `requested` (or $EMBEDRANK_ATTENTION) if given, else the best available
    for `dtype` (fp32, or a GPU older than sm80, falls back to sdpa_packed)."""
    requested = requested or os.environ.get(ENV_OVERRIDE) or None
    usable = available_backends(device, dtype)
    if requested is None:
        return usable[0]
    if requested not in BACKENDS:
        raise ValueError(
            f"unknown attention backend {requested!r}: choose one of {', '.join(BACKENDS)} "
            f"(or leave it unset to pick the best of {', '.join(usable)} on {torch.device(device)})"
        )
    if requested not in usable:
        device = torch.device(device)
        if (
            device.type == "cuda"
            and requested in ("flash_attn", "torch_varlen")
            and dtype not in (None, *VARLEN_DTYPES)
        ):
            raise ValueError(
                f"model.attention {requested} runs in bf16 or fp16 only, not {dtype}: set model.dtype "
                "to bf16, or model.attention to sdpa_packed"
            )
        hint = "pip install 'embedrank[gpu]'" if requested == "flash_attn" else "it needs CUDA and torch >= 2.10"
        hint += "; both varlen kernels need a GPU of compute capability 8.0 or newer"
        raise ValueError(
            f"attention backend {requested!r} is not available on {torch.device(device)} ({hint}); "
            f"available here: {', '.join(usable)}"
        )
    return requested


def is_packed(backend: str) -> bool:
    return backend in PACKED_BACKENDS


def padded_attention_mask(attention_mask_2d: torch.Tensor) -> torch.Tensor:
    """[B, S] 0/1 left-padding mask -> bool [B, 1, S, S] causal mask.

    Pad query rows may attend to themselves: a row with no allowed key would give NaN, and a NaN in a pad
    position's values multiplies into real rows as 0 * NaN in the next layer.
    """
    b, s = attention_mask_2d.shape
    causal = torch.ones(s, s, dtype=torch.bool, device=attention_mask_2d.device).tril()
    real_keys = attention_mask_2d.bool()[:, None, None, :]
    eye = torch.eye(s, dtype=torch.bool, device=attention_mask_2d.device)
    return (causal & real_keys) | eye


def _sdpa_packed(q, k, v, cu_host: torch.Tensor, scale: float) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D]: one causal SDPA call per sequence -> [T, Hq, D]."""
    gqa = q.shape[1] != k.shape[1]
    if gqa and q.device.type == "cuda":
        # CUDA's fused SDPA kernels take no GQA here (flash: no fp32; memory-efficient: no GQA), and
        # enable_gqa would fall back to the math kernel (Hq x n^2 fp32 scores per row, uncounted): repeat the
        # K/V heads once per batch instead, so the memory-efficient kernel runs (forward.kernel_extra_bytes
        # counts the copies in the token budget).
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        gqa = False
    qh, kh, vh = (t.transpose(0, 1) for t in (q, k, v))  # [H, T, D]
    out = torch.empty_like(qh)
    bounds = cu_host.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        out[:, start:end] = F.scaled_dot_product_attention(
            qh[None, :, start:end],
            kh[None, :, start:end],
            vh[None, :, start:end],
            is_causal=True,
            scale=scale,
            enable_gqa=gqa,
        )[0]
    return out.transpose(0, 1).contiguous()


def varlen_gqa_mode(has_enable_gqa: bool, native_exact: bool | None) -> str:
    """How torch's varlen kernel gets fewer K/V heads than query heads: "enable_gqa" (the signature takes it),
    "native" (no such keyword, but the on-device probe found un-repeated K/V exact), else "repeat"."""
    if has_enable_gqa:
        return "enable_gqa"
    return "native" if native_exact else "repeat"


def native_gqa_exact(run_unrepeated, run_repeated) -> bool:
    """The probe's decision: True only when the kernel accepts un-repeated K/V and gives the repeated result.

    Both callables run the same inputs; a refusal (any exception), a shape change or any difference means the
    kernel does not take GQA natively, and K/V stay repeated."""
    try:
        got = run_unrepeated()
    except Exception:
        return False
    want = run_repeated()
    return got.shape == want.shape and bool(torch.equal(got, want))


@functools.cache
def _varlen_native_gqa(device: torch.device) -> bool:
    """One probe per process and device: does this torch's varlen_attn take Hkv < Hq without enable_gqa?"""
    fn, causal, _, _ = _torch_varlen()
    gen = torch.Generator(device=device).manual_seed(0)
    lengths = [5, 11, 3]
    cu = torch.tensor([0, 5, 16, 19], dtype=torch.int32, device=device)
    hq, hkv, d = 8, 2, 64
    q = torch.randn(sum(lengths), hq, d, device=device, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(sum(lengths), hkv, d, device=device, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(sum(lengths), hkv, d, device=device, dtype=torch.bfloat16, generator=gen)
    m = max(lengths)
    rep = hq // hkv
    return native_gqa_exact(
        lambda: fn(q, k, v, cu, cu, m, m, **causal),
        lambda: fn(q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), cu, cu, m, m, **causal),
    )


def _varlen(q, k, v, cu, cu_host: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D] through one varlen kernel call."""
    m = int((cu_host[1:] - cu_host[:-1]).max())
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(q, k, v, cu, cu, m, m, softmax_scale=scale, causal=True)
    fn, causal, has_gqa, has_scale = _torch_varlen()
    kwargs = dict(causal)
    if q.shape[1] != k.shape[1]:
        mode = varlen_gqa_mode(has_gqa, None if has_gqa else _varlen_native_gqa(q.device))
        if mode == "enable_gqa":
            kwargs["enable_gqa"] = True
        elif mode == "repeat":
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if has_scale:
        kwargs["scale"] = scale
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-12:  # pragma: no cover
        raise RuntimeError("this torch's varlen_attn has no `scale`; the model needs a non-default one")
    return fn(q, k, v, cu, cu, m, m, **kwargs)


# The packed kernels are one custom op, opaque to torch.compile: its Python (a loop over sequences, host-side
# lengths, a library call) runs as written, and the fake implementation gives the compiler the output's shape,
# so a compiled decoder layer keeps one graph for any batch composition.
@torch.library.custom_op("embedrank::packed_attention", mutates_args=())
def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor,
    cu_host: torch.Tensor,
    scale: float,
    backend: str,
) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] (packed), cu on the device, cu_host on the CPU -> [T, Hq, D] contiguous."""
    if backend == "sdpa_packed":
        return _sdpa_packed(q, k, v, cu_host, scale)
    return _varlen(q, k, v, cu, cu_host, scale, backend).contiguous()


@packed_attention.register_fake
def _(q, k, v, cu, cu_host, scale, backend):
    return q.new_empty(q.shape)


def embedrank_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [B, Hq, S, D], key/value [B, Hkv, S, D] -> ([B, S, Hq, D], None)."""
    layout: BatchLayout | None = kwargs.get("embedrank_batch")
    if layout is None:
        raise RuntimeError(
            "the 'embedrank' attention implementation needs the embedrank_batch keyword; "
            "run the model through Qwen3Embedder / Qwen3Reranker"
        )
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    if layout.backend in PACKED_BACKENDS:
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
        out = packed_attention(q, k, v, layout.cu_seqlens, layout.cu_host, scale, layout.backend)
        return out.unsqueeze(0), None
    if query.shape[1] != key.shape[1]:
        # With a mask, CUDA's flash SDPA kernel refuses the mask and the memory-efficient one refuses GQA, so
        # enable_gqa would fall back to the math kernel: repeat the K/V heads instead (as transformers does).
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=layout.mask, scale=scale)
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def register() -> str:
    """Register the kernel with transformers (once per process); returns the implementation name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, embedrank_attention)
    try:  # mask creation is skipped (masks are passed prepared), but newer releases look the name up
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    except Exception:  # pragma: no cover - older transformers
        pass
    return ATTN_IMPLEMENTATION
