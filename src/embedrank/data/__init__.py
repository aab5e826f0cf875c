"""embedrank inside your own Ray Data pipeline: processors shaped like `ray.data.llm`'s.

    from embedrank.data import EmbedConfig, RerankConfig, build_embedder, build_reranker

    ds = ray.data.read_parquet("s3://bucket/docs/")                        # any Dataset, any columns
    ds = build_embedder(EmbedConfig(model={"source": "Qwen/Qwen3-Embedding-0.6B"}, text_column="body",
                                    embed={"concurrency": (1, 8), "num_gpus": 1}))(ds)   # + embedding, ...
    ds = build_reranker(RerankConfig(query_column="q", document_column="body", rerank={"num_gpus": 1}))(ds)

The sections are the jobs' own (`model`, `embed`/`rerank`, `prepare`, `storage`: embedrank.config), so a
YAML job config and a processor use the same keys.

Each processor adds two stages to the Dataset's plan, the jobs' own: CPU tokenize tasks, then a model actor
pool running length-sorted token-budget micro-batches. Nothing runs until the Dataset is consumed. The rows
the model cannot take keep their place, with the reason in an error column (`on_error="raise"` stops
instead); every other column passes through untouched. This folder also holds the sample data files.
"""

from __future__ import annotations

from .columns import BadRowError
from .configs import EmbedConfig, RerankConfig
from .embedding import build_embedder
from .processor import Processor
from .reranking import build_reranker

__all__ = ["BadRowError", "EmbedConfig", "Processor", "RerankConfig", "build_embedder", "build_reranker"]
