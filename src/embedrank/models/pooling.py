"""Pooling and normalisation: pure tensor functions.

Qwen3-Embedding pools the final hidden state of the last real token. The pad token and `<|endoftext|>` share
an id (151643), so the last token is found from lengths / cu_seqlens / the padding layout, never by searching
for an id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_token_indices_packed(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """cu_seqlens [n+1] -> flat indices [n] of each sequence's last token in a packed batch."""
    return cu_seqlens[1:].long() - 1


def last_token_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """hidden [1, T, H] (packed) -> [n, H]."""
    return hidden[0].index_select(0, last_token_indices_packed(cu_seqlens).to(hidden.device))


def last_token_left_padded(hidden: torch.Tensor) -> torch.Tensor:
    """hidden [B, S, H] of a left-padded batch -> [B, H]: the last column is every row's last real token."""
    return hidden[:, -1]


def matryoshka_normalize(pooled: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """[n, H] -> [n, dim] float32: keep the first `dim` values, then L2-normalise (in fp32, whatever the input)."""
    if dim is not None:
        if not 1 <= dim <= pooled.shape[-1]:
            raise ValueError(f"dim must be between 1 and the model's hidden size {pooled.shape[-1]}, got {dim}")
        pooled = pooled[..., :dim]
    return F.normalize(pooled.float(), p=2, dim=-1)
