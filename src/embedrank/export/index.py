"""The ANN index built after a load: IVF-PQ or HNSW (LanceDB's IVF_HNSW_SQ) over a float vector column.

Parameters come from the config (export section); None leaves LanceDB's own default. The metric is the inner
product ("dot") by default: the job's vectors are L2-normalised, so it orders like cosine.
"""

from __future__ import annotations

from ..errors import UserError

INDEX_TYPES = {"ivf_pq": "IVF_PQ", "hnsw": "IVF_HNSW_SQ"}


def build_index(dataset, kind: str, *, column: str, metric: str, params: dict) -> None:
    """Build (replace) the index `kind` on `column` of a Lance dataset."""
    if kind not in INDEX_TYPES:
        raise UserError(f"--index {kind}: choose one of {', '.join(INDEX_TYPES)}")
    if column not in dataset.schema.names:
        raise UserError(
            f"--index {kind}: the table has no column {column!r}; set export.vector_column to one of its vector columns"
        )
    field = dataset.schema.field(column)
    if field.type.value_type.bit_width < 16:
        raise UserError(
            f"--index {kind}: column {column!r} holds compact codes; index a float column "
            "(export.vector_column, e.g. an output with output.extra_embedding_dtypes: [float32])"
        )
    options = {k: v for k, v in params.items() if v is not None}
    if kind == "ivf_pq":
        dataset.create_index(column, index_type="IVF_PQ", metric=metric, replace=True, **options)
    else:
        dataset.create_index(column, index_type="IVF_HNSW_SQ", metric=metric, replace=True, **options)
