"""The config of `embedrank export` (ExportConfig): the source, the target, the index and its parameters, as
keys like every job's (settings.py), so that `--set`, `--config` and `embedrank config --job export` serve it."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ..config import CorpusVectorsConfig, RayConfig, StorageConfig, require_uri
from ..errors import ConfigError
from ..settings import Section, key, section


class ExportConfig(Section):
    """`embedrank export`: the committed vectors of an embed output or a nightly root into LanceDB or Lance."""

    input: CorpusVectorsConfig = section(CorpusVectorsConfig, "the embed job's output, or a nightly root")
    to: str = key("", "lancedb://DIR/TABLE or lance://URI (local or object storage)")
    index: Literal["none", "ivf_pq", "hnsw"] = key("none", "an ANN index built after the load: none | ivf_pq | hnsw")
    metric: Literal["dot", "cosine", "l2"] = key("dot", "the index's metric (the vectors are L2-normalised)")
    vector_column: str = key("embedding", "the column to index", min_length=1)
    num_partitions: int | None = key(None, "ivf_pq: IVF partitions; null: LanceDB's default", ge=1)
    num_sub_vectors: int | None = key(None, "ivf_pq: PQ sub-vectors; null: LanceDB's default", ge=1)
    m: int | None = key(None, "hnsw: neighbours per node; null: LanceDB's default", ge=1)
    ef_construction: int | None = key(None, "hnsw: candidates while building; null: LanceDB's default", ge=1)
    rows_per_batch: int = key(10000, "rows per upsert or delete transaction of a sync", ge=1)
    storage: StorageConfig = section(StorageConfig, "object storage of the source")
    ray: RayConfig = section(RayConfig, "the Ray cluster")

    @model_validator(mode="after")
    def _combinations(self):
        require_uri(self.input.uri, "input.uri", "input")
        if not self.to:
            raise ConfigError("to is empty: pass --to lancedb://DIR/TABLE or lance://URI")
        return self

    def index_params(self) -> dict:
        names = ("num_partitions", "num_sub_vectors") if self.index == "ivf_pq" else ("m", "ef_construction")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}
