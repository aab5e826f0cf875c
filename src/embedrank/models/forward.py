"""Load a Qwen3 network and run token sequences through it in token-budget micro-batches.

Shared by the embedder and the reranker: both need only the final hidden state of each sequence's last token.
The network is transformers' own Qwen3 with the `embedrank` attention kernel (see attention.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import attention, batching, compiler, loading, pooling
from .loading import dtype_kwarg  # noqa: F401 - re-exported: reference.py and the benchmarks use it here

# Budgets count computed tokens (padding included in padded layout). CPU budgets stay small so that the
# per-batch attention matrices of padded SDPA fit comfortably in cache-friendly sizes. On CUDA the budget is
# sized to the memory left after loading (token_budget_for_memory), up to the CUDA figure here.
DEFAULT_MAX_TOKENS = {"cuda": 65536, "cpu": 8192}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def placement(
    device: str | torch.device | None, attention_name: str | None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, str]:
    """(device, attention backend) of a model: the given ones, else CUDA when present and its best kernel for
    the model's dtype."""
    device = torch.device(device) if device is not None else default_device()
    return device, attention.choose_backend(device, attention_name, parse_dtype(dtype, device))


def kernel_extra_bytes(
    backend: str,
    *,
    device_type: str,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    elem_bytes: int,
    max_length: int,
    varlen_repeats: bool = False,
) -> int:
    """Bytes per token that the attention kernel allocates beyond the layer's own tensors.

    Repeated K/V heads (padded SDPA always; sdpa_packed on CUDA, so that the memory-efficient kernel runs
    instead of the math one; torch_varlen where it takes no GQA) add 2 x (Hq - Hkv) x head_dim values. Padded
    SDPA also holds its [B, 1, S, S] mask: a bool one, and the additive copy in the model's dtype that the
    memory-efficient kernel takes: S x (1 + elem) bytes per token, S up to max_length.
    """
    repeats = q_heads != kv_heads and (
        backend == "sdpa_padded"
        or (backend == "sdpa_packed" and device_type == "cuda")
        or (backend == "torch_varlen" and varlen_repeats)
    )
    extra = 2 * (q_heads - kv_heads) * head_dim * elem_bytes if repeats else 0
    if backend == "sdpa_padded":
        extra += max_length * (1 + elem_bytes)
    return extra


def token_budget_for_memory(
    free_bytes: int,
    *,
    hidden: int,
    intermediate: int,
    elem_bytes: int,
    max_length: int,
    share: float = 0.5,
    cap: int = DEFAULT_MAX_TOKENS["cuda"],
    extra_per_token: int = 0,
) -> int:
    """Tokens per micro-batch whose activations fit in `share` of `free_bytes`, at most `cap`.

    Inference keeps no KV cache, so one layer's live tensors bound the activations: per token about 8 hidden
    vectors (residual, norms, q/k/v/o) and 3 MLP vectors (gate, up, their product), plus what the attention
    kernel allocates (`extra_per_token`, see kernel_extra_bytes). Never below max_length: the longest row must
    fit in one pass.
    """
    per_token = elem_bytes * (8 * hidden + 3 * intermediate) + extra_per_token
    fits = int(share * free_bytes / per_token) // 256 * 256
    return max(max_length, min(fits, cap))


def token_budget(model, device: torch.device, requested: int | None, max_length: int, backend: str = "") -> int:
    """The configured budget; else, on CUDA, one sized to the GPU memory free after loading (the attention
    kernel's own allocations counted); else the CPU one."""
    if requested:
        return int(requested)
    if device.type != "cuda":
        return DEFAULT_MAX_TOKENS.get(device.type, DEFAULT_MAX_TOKENS["cpu"])
    free, _ = torch.cuda.mem_get_info(device)
    cfg = model.config
    elem = torch.finfo(model.dtype).bits // 8
    q_heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    repeats = False
    if backend == "torch_varlen" and q_heads != kv_heads:
        fn = attention._torch_varlen()
        repeats = fn is not None and not fn[2] and not attention._varlen_native_gqa(device)
    extra = kernel_extra_bytes(
        backend,
        device_type=device.type,
        q_heads=q_heads,
        kv_heads=kv_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // q_heads,
        elem_bytes=elem,
        max_length=max_length,
        varlen_repeats=repeats,
    )
    return token_budget_for_memory(
        free,
        hidden=cfg.hidden_size,
        intermediate=cfg.intermediate_size,
        elem_bytes=elem,
        max_length=max_length,
        extra_per_token=extra,
    )


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU (fp16 overflows on some 8B inputs), fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}: use one of bf16, fp16, fp32")
    return names[dtype]


def load_qwen3(path: Path, *, causal_lm: bool, device: torch.device, dtype: torch.dtype):
    """Load the checkpoint at `path` (safetensors only, no remote code) with the embedrank kernel, straight
    onto `device` (host memory holds one tensor at a time: see loading.py)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor loading bar is noise in batch-job logs
    return loading.load_qwen3_direct(path, causal_lm=causal_lm, device=device, dtype=dtype, attn=attention.register())


@dataclass
class ForwardStats:
    """Token accounting of forward passes: real tokens, tokens computed (padding included), passes."""

    real_tokens: int = 0
    computed_tokens: int = 0
    micro_batches: int = 0
    # per row, in input order: the tokens computed for it (padding included)
    row_cost: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 1.0


class LastTokenForward:
    """Run a Qwen3 base model over token sequences and return each one's last hidden state.

    Rows are sorted by length, cut into micro-batches of at most `max_tokens` computed tokens, run packed
    (varlen kernels) or left-padded (SDPA) according to the backend, and returned in input order.
    """

    def __init__(
        self, base_model, *, device: torch.device, backend: str, max_tokens: int, pad_id: int, compiled: bool = False
    ):
        self.model = base_model
        self.device = device
        self.backend = backend
        self.packed = attention.is_packed(backend)
        self.max_tokens = int(max_tokens)
        self.pad_id = pad_id
        self.hidden_size = base_model.config.hidden_size
        self.compiled = compiled
        self.compile_seconds = 0.0
        if compiled:
            compiler.compile_layers(base_model)

    def warm_up(self) -> float:
        """Compile now, not on the first real batch: run the shapes that a compiled layer specialises on
        (a batch of one row, and of several) once. Returns the seconds it took (0 when not compiled)."""
        if not self.compiled or self.compile_seconds:
            return self.compile_seconds
        start = time.perf_counter()
        for lengths in compiler.WARM_UP_LENGTHS:
            self.run_micro_batch([np.full(n, self.pad_id, dtype=np.int64) for n in lengths])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.compile_seconds = time.perf_counter() - start
        return self.compile_seconds

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            # Pinned memory lets the copy overlap with the kernels already queued.
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, layout: attention.BatchLayout) -> torch.Tensor:
        masks = {"full_attention": layout.mask, "sliding_attention": layout.mask}
        out = self.model(
            input_ids=ids, position_ids=positions, attention_mask=masks, use_cache=False, embedrank_batch=layout
        )
        return out.last_hidden_state

    def _run_packed(self, seqs: list[np.ndarray]) -> torch.Tensor:
        flat, positions, cu = batching.pack(seqs)
        cu_t = self._to_device(cu)
        layout = attention.BatchLayout(backend=self.backend, cu_seqlens=cu_t, cu_host=torch.from_numpy(cu))
        hidden = self._forward(self._to_device(flat)[None], self._to_device(positions)[None], layout)
        return pooling.last_token_packed(hidden, cu_t)

    def _run_padded(self, seqs: list[np.ndarray]) -> torch.Tensor:
        ids, mask = batching.pad_left(seqs, self.pad_id)
        positions = np.clip(mask.cumsum(axis=1) - 1, 0, None)
        mask_t = self._to_device(mask)
        layout = attention.BatchLayout(backend=self.backend, mask=attention.padded_attention_mask(mask_t))
        hidden = self._forward(self._to_device(ids), self._to_device(positions), layout)
        return pooling.last_token_left_padded(hidden)

    @torch.inference_mode()
    def __call__(self, sequences: Sequence[np.ndarray]) -> tuple[torch.Tensor, ForwardStats]:
        """sequences: n token-id arrays -> ([n, hidden] in the model's dtype on its device, stats)."""
        lengths = [len(s) for s in sequences]
        layout = "packed" if self.packed else "padded"
        batches = batching.micro_batches(lengths, self.max_tokens, layout=layout)
        out = torch.empty(len(sequences), self.hidden_size, dtype=self.model.dtype, device=self.device)
        row_cost = np.asarray(lengths, dtype=np.int64)
        for rows in batches:
            seqs = [np.asarray(sequences[i], dtype=np.int64) for i in rows]
            if not self.packed:
                row_cost[rows] = max(map(len, seqs))
            # Pinned, non-blocking (on CUDA): no host sync per micro-batch; results stay on the device.
            out[self._to_device(np.asarray(rows, dtype=np.int64))] = self.run_micro_batch(seqs)
        stats = ForwardStats(
            real_tokens=int(sum(lengths)),
            computed_tokens=int(row_cost.sum()),
            micro_batches=len(batches),
            row_cost=row_cost,
        )
        return out, stats

    @torch.inference_mode()  # also when called directly (benchmarks): no autograd graph, no saved activations
    def run_micro_batch(self, seqs: list[np.ndarray]) -> torch.Tensor:
        """One forward pass over `seqs` as given (no sorting, no budget): [len(seqs), hidden]."""
        return self._run_packed(seqs) if self.packed else self._run_padded(seqs)
