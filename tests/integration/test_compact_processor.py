"""retrieve_top_k (retrieve/processor.py) over a Ray Dataset of compact vectors: binary searched and rescored
from a float column, and int8 with its range, against exact float32 search."""

import numpy as np
import pyarrow as pa
import pytest

from embedrank.quantize import binarize, calibrate, quantize_int8
from embedrank.retrieve.processor import retrieve_top_k


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fixed(values: np.ndarray, arrow_type) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), arrow_type), values.shape[1])


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_retrieve_top_k_on_binary_with_rescore_and_on_int8(ray_local):
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((30, 64)))
    docs = unit(centres[rng.integers(0, 30, 3000)] + 0.6 * unit(rng.standard_normal((3000, 64))))
    queries = unit(centres[rng.integers(0, 30, 40)] + 0.6 * unit(rng.standard_normal((40, 64))))
    r = calibrate(docs)
    ids = [f"d{i:05d}" for i in range(len(docs))]
    corpus = pa.table(
        {
            "id": ids,
            "embedding": fixed(binarize(docs), pa.uint8()),
            "embedding_float32": fixed(docs, pa.float32()),
            "embedding_int8": fixed(quantize_int8(docs, r), pa.int8()),
        }
    )
    query_table = pa.table({"id": [f"q{i}" for i in range(len(queries))], "embedding": fixed(queries, pa.float32())})
    exact = [{ids[i] for i in row} for row in np.argsort(-(queries @ docs.T), axis=1)[:, :10]]
    q_ds = ray_local.data.from_arrow(query_table)

    c_ds = ray_local.data.from_arrow([corpus.slice(0, 1500), corpus.slice(1500)])
    # int8 codes under the queries' column name: one embedding_column names the vectors of both Datasets
    codes = corpus.select(["id", "embedding_int8"]).rename_columns(["id", "embedding"])

    def recall(result) -> float:
        rows = sorted(result.take_all(), key=lambda row: int(row["query_id"][1:]))
        return float(np.mean([len({c["doc_id"] for c in row["candidates"]} & e) / 10 for row, e in zip(rows, exact)]))

    binary = retrieve_top_k(q_ds, c_ds, top_k=10, search="binary", rescore_column="embedding_float32", rescore_k=100)
    assert recall(binary) >= 0.95
    int8 = retrieve_top_k(
        q_ds,
        ray_local.data.from_arrow(codes),
        top_k=10,
        search="int8",
        int8_range=r.to_json(),
    )
    assert recall(int8) >= 0.95
