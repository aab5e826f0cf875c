"""int8 and binary vector files as the embed writer makes them (embed/stages.py): the columns and their
Parquet metadata round-trip to what retrieve reads; one int8 range per output, kept by a resumed run
(embed/calibrate.py). No Ray, no model."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.embed.calibrate import settle_int8_range
from embedrank.embed.stages import embedding_array, vector_columns, vector_metadata, vectors_table
from embedrank.io.sources import list_shards
from embedrank.quantize import Int8Range, binarize, calibrate, quantize_int8
from embedrank.retrieve.search import query_floats
from embedrank.retrieve.vectors import column_matrix, plan_search, read_footer
from embedrank.runtime.store import OutputStore

DIM = 64


def unit_rows(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def written_file(tmp_path, dtypes: list[str], vectors: np.ndarray, rng: Int8Range | None):
    """The writer's path for one batch: actor columns -> vectors_table + vector_metadata -> a Parquet file."""
    n = len(vectors)
    columns = vector_columns(vectors, None, dtypes, rng)
    part = {"id": pa.array([f"d{i}" for i in range(n)])}
    for name, values in columns.items():
        dtype = dtypes[0] if name == "embedding" else name[len("embedding_") :]
        part[name] = embedding_array(values, n, np.arange(n), dtype)
    part.update(
        n_tokens=pa.array([3] * n, pa.int32()),
        truncated=pa.array([False] * n),
        content_hash=pa.array(["h"] * n),
    )
    table = pa.table(part)
    meta = {"embedrank.model": "tiny", **vector_metadata(table.schema, rng.to_json() if rng else None)}
    path = tmp_path / "part-00000.parquet"
    pq.write_table(vectors_table(table, chunked=False, passthrough=[], metadata=meta), path)
    return read_footer(list_shards([str(path)], fmt="parquet")[0]), path


def test_int8_output_round_trips_with_its_range(tmp_path):
    vectors = unit_rows(300)
    rng = calibrate(vectors)
    footer, path = written_file(tmp_path, ["int8"], vectors, rng)
    assert footer.dim == DIM and footer.dtypes == (("embedding", "int8"),)
    assert Int8Range.from_json(footer.int8_range) == rng
    table = pq.read_table(path)
    assert table.schema.field("embedding").type == pa.list_(pa.int8(), DIM)
    codes = column_matrix(table.column("embedding"), "int8", str(path))
    assert np.array_equal(codes, quantize_int8(vectors, rng))
    back = query_floats(codes, "int8", Int8Range.from_json(footer.int8_range), DIM)
    assert np.abs(back - vectors).max() <= rng.step.max() / 2 + 1e-6


def test_binary_output_with_a_float_column_round_trips(tmp_path):
    vectors = unit_rows(200, seed=1)
    footer, path = written_file(tmp_path, ["binary", "float32"], vectors, None)
    assert footer.dim == DIM and footer.main_dtype == "binary"
    assert footer.column_of("float32") == "embedding_float32" and footer.int8_range is None
    table = pq.read_table(path)
    assert table.schema.field("embedding").type == pa.list_(pa.uint8(), DIM // 8)
    assert np.array_equal(column_matrix(table.column("embedding"), "binary", str(path)), binarize(vectors))
    assert np.array_equal(np.stack(table.column("embedding_float32").to_numpy(zero_copy_only=False)), vectors)
    meta = table.schema.metadata
    assert json.loads(meta[b"embedrank.vector_columns"]) == {"embedding": "binary", "embedding_float32": "float32"}
    search = plan_search([footer], dim=DIM, top_k=10)
    assert (search["dtype"], search["rescore_column"], search["exact_column"]) == (
        "binary",
        "embedding_float32",
        "embedding_float32",
    )


def test_carried_documents_keep_their_codes_and_float_ones_are_encoded_again():
    vectors, previous = unit_rows(4), unit_rows(3, seed=2)
    rng = calibrate(np.concatenate([vectors, previous]))
    out = vector_columns(vectors, quantize_int8(previous, rng).astype(np.float32), ["int8"], rng)
    assert np.array_equal(out["embedding"], quantize_int8(np.concatenate([vectors, previous]), rng))
    out = vector_columns(vectors, previous, ["float32", "binary"], None)
    assert np.array_equal(out["embedding_binary"], binarize(np.concatenate([vectors, previous])))
    with pytest.raises(ValueError, match="set output.embedding_dtype: float32"):
        vector_columns(vectors, binarize(previous).astype(np.float32), ["binary", "float32"], None)


class Output:
    """The output section's int8 keys (config objects are frozen dataclasses of these names)."""

    def __init__(self, int8_range="calibrate", dtype="int8", extra=()):
        self.embedding_dtype, self.extra_embedding_dtypes = dtype, extra
        self.int8_range, self.int8_calibration_rows = int8_range, 100


def test_a_resumed_run_keeps_the_range_it_calibrated(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    samples = []

    def sample(limit):
        samples.append(limit)
        return unit_rows(limit, seed=len(samples))

    first = settle_int8_range(Output(), [store], "fp1", sample, log=lambda _: None)
    again = settle_int8_range(Output(), [store], "fp1", sample, log=lambda _: None)  # the rerun after a kill
    assert again == first and samples == [100]  # calibrated once, on the configured sample size
    other = settle_int8_range(Output(), [store], "fp2", sample, log=lambda _: None)  # other vectors: afresh
    assert other != first and samples == [100, 100]
    # A nightly version finds the previous version's range and keeps it (its carried codes use it).
    tonight = OutputStore(str(tmp_path / "v2"))
    assert settle_int8_range(Output(), [tonight, store], "fp2", sample, log=lambda _: None) == other


def test_a_fixed_range_needs_no_sample_and_float_outputs_need_no_range(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    fixed = Int8Range.from_json(settle_int8_range(Output(0.25), [store], "fp", None, dim=DIM))
    assert fixed.source == "fixed" and fixed.lo.tolist() == [-0.25] * DIM
    assert settle_int8_range(Output(dtype="float32"), [store], "fp", None) is None
    assert settle_int8_range(Output(dtype="float32", extra=("int8",)), [store], "fp", None) is not None
