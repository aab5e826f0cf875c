"""embedrank: embed whole corpora with Qwen3-Embedding and rerank candidate lists with Qwen3-Reranker on Ray.

    from embedrank import Qwen3Embedder, Qwen3Reranker      # the models, in one process, no Ray
    from embedrank import run_embed, run_rerank, run_nightly  # whole jobs, as the CLI runs them
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Qwen3Embedder", "Qwen3Reranker", "run_embed", "run_nightly", "run_rerank", "__version__"]

# Lazy, so that `import embedrank` (the CLI, the Ray driver) does not pay for torch, transformers or Ray.
_LAZY = {
    "Qwen3Embedder": ("models.embedder", "Qwen3Embedder"),
    "Qwen3Reranker": ("models.reranker", "Qwen3Reranker"),
    "run_embed": ("embed.job", "run_embed"),
    "run_nightly": ("embed.nightly", "run_nightly"),
    "run_rerank": ("rerank.job", "run_rerank"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module 'embedrank' has no attribute {name!r}")
