"""embedrank: embed whole corpora with Qwen3-Embedding and rerank candidate lists with Qwen3-Reranker on Ray.

from embedrank import Qwen3Embedder, Qwen3Reranker      # the models, in one process, no Ray
from embedrank import run_embed, run_rerank, run_nightly, run_retrieve  # whole jobs (one per registry.JOBS)
from embedrank import EmbedConfig, build_embedder         # processors for your own Ray Datasets (data/)
from embedrank import retrieve_top_k                      # exact top-k between two Datasets of vectors
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = [
    "EmbedConfig",
    "Qwen3Embedder",
    "Qwen3Reranker",
    "RerankConfig",
    "build_embedder",
    "build_reranker",
    "retrieve_top_k",
    "__version__",
]

# Lazy, so that `import embedrank` (the CLI, the Ray driver) does not pay for torch, transformers or Ray.
_LAZY = {
    "Qwen3Embedder": ("models.embedder", "Qwen3Embedder"),
    "Qwen3Reranker": ("models.reranker", "Qwen3Reranker"),
    "retrieve_top_k": ("retrieve.processor", "retrieve_top_k"),
    "EmbedConfig": ("data", "EmbedConfig"),
    "RerankConfig": ("data", "RerankConfig"),
    "build_embedder": ("data", "build_embedder"),
    "build_reranker": ("data", "build_reranker"),
}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    if name.startswith("run_"):  # one per job of the registry (api.py)
        api = importlib.import_module(f"{__name__}.api")
        if hasattr(api, name):
            return getattr(api, name)
    raise AttributeError(f"module 'embedrank' has no attribute {name!r}")
