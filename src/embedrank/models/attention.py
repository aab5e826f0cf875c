"""The one place that picks the attention kernel.

Order of preference: flash-attn's varlen kernel (CUDA, packed) > PyTorch's own
`torch.nn.attention.varlen.varlen_attn` (CUDA, packed) > SDPA. On the CPU the default is `sdpa_packed`: the
projections and MLPs run on packed tokens with no padding at all, and attention runs per sequence through
SDPA, which on the CPU measured faster than length-bucketed padding (see BENCHMARKS.md); `sdpa_padded`
(length-bucketed, left-padded) stays available everywhere. The network itself is transformers' own Qwen3:
the kernel plugs in through `transformers.AttentionInterface` under the name `embedrank`, and reads how the
batch is laid out from the `embedrank_batch` keyword that the model forwards to every attention call.

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

    packed: `cu_seqlens` (int32 [n+1], on the model's device), `max_seqlen` and the host-side `lengths` (so
    that no kernel needs a device-to-host sync to find the boundaries).
    padded: `mask` is a bool [B, 1, S, S] tensor: True where a query may attend to a key.
    """

    backend: str
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    lengths: tuple[int, ...] = ()
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


def _sdpa_packed(query, key, value, layout: BatchLayout, scaling):
    # query [1, Hq, T, D], key/value [1, Hkv, T, D]: one causal SDPA call per sequence.
    out = torch.empty_like(query)
    start = 0
    for n in layout.lengths:
        end = start + n
        out[:, :, start:end] = F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            is_causal=True,
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
        start = end
    return out.transpose(1, 2)


def _varlen(query, key, value, layout: BatchLayout, scaling, backend: str):
    # Varlen kernels take [total_tokens, heads, head_dim].
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    cu, m = layout.cu_seqlens, layout.max_seqlen
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        out = flash_attn_varlen_func(q, k, v, cu, cu, m, m, softmax_scale=scaling, causal=True)
    else:
        fn, causal, has_gqa, has_scale = _torch_varlen()
        kwargs = dict(causal)
        if q.shape[1] != k.shape[1]:
            if has_gqa:
                kwargs["enable_gqa"] = True
            else:
                groups = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if has_scale:
            kwargs["scale"] = scaling
        elif scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-12:  # pragma: no cover
            raise RuntimeError("this torch's varlen_attn has no `scale`; the model needs a non-default one")
        out = fn(q, k, v, cu, cu, m, m, **kwargs)
    return out.unsqueeze(0)


def embedrank_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [B, Hq, S, D], key/value [B, Hkv, S, D] -> ([B, S, Hq, D], None)."""
    layout: BatchLayout | None = kwargs.get("embedrank_batch")
    if layout is None:
        raise RuntimeError(
            "the 'embedrank' attention implementation needs the embedrank_batch keyword; "
            "run the model through Qwen3Embedder / Qwen3Reranker"
        )
    if layout.backend in ("flash_attn", "torch_varlen"):
        return _varlen(query, key, value, layout, scaling, layout.backend), None
    if layout.backend == "sdpa_packed":
        return _sdpa_packed(query, key, value, layout, scaling), None
    if query.shape[1] != key.shape[1]:
        # With a mask, CUDA's flash SDPA kernel refuses the mask and the memory-efficient one refuses GQA, so
        # enable_gqa would fall back to the math kernel: repeat the K/V heads instead (as transformers does).
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=layout.mask, scale=scaling)
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
