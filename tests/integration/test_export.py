"""`run_export` (src/embedrank/export/) into LanceDB with local Ray: a 20k-row output equals the table, an exact
LanceDB search returns retrieve's top 10, a killed export rerun gives the same table, a nightly night adds,
changes and deletes exactly its documents, and an IVF-PQ index keeps recall@10 >= 0.9 against exact search."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

lance = pytest.importorskip("lance")
lancedb = pytest.importorskip("lancedb")

from embedrank.embed.stages import vector_metadata, vectors_table  # noqa: E402
from embedrank.export import run_export  # noqa: E402
from embedrank.retrieve.stages import score_partition  # noqa: E402
from embedrank.runtime.store import OutputStore  # noqa: E402

DIM = 32


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rows_table(ids: list, vectors: np.ndarray, hashes: list[str]) -> pa.Table:
    """Committed rows as the embed job writes them (its own writer: vectors_table, vector_metadata); integer
    ids as int64, as the job writes them."""
    part = pa.table(
        {
            "id": pa.array(ids),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
            "n_tokens": pa.array([8] * len(ids), pa.int32()),
            "truncated": pa.array([False] * len(ids)),
            "content_hash": pa.array(hashes),
        }
    )
    meta = {"embedrank.model": "tiny", "embedrank.fingerprint": "fp1", **vector_metadata(part.schema, None)}
    id_type = "int64" if isinstance(ids[0], int) else "string"
    return vectors_table(part, chunked=False, passthrough=[], metadata=meta, id_type=id_type)


def write_output(uri: str, table: pa.Table, files: int = 4) -> None:
    """An embed output: `files` committed shards of `table`'s rows."""
    store = OutputStore(uri)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        staged = store.path("_embedrank", "staging", "run", f"s{i}.parquet")
        store.fs.makedirs(os.path.dirname(staged), exist_ok=True)
        pq.write_table(table.slice(lo, hi - lo), staged)
        store.commit_shard(f"shard{i}.jsonl", {"data": [staged]}, {"shard": {"key": f"shard{i}.jsonl"}})


def write_night(root: Path, version: str, table: pa.Table) -> None:
    write_output(str(root / version), table, files=2)
    (root / "_CURRENT").write_text(version)


def corpus(n: int, seed: int = 0, int_ids: bool = False) -> tuple[list, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    ids = list(range(n)) if int_ids else [f"doc{i:06d}" for i in range(n)]
    return ids, unit(rng.standard_normal((n, DIM))), [f"h{i}" for i in range(n)]


def table_of(uri: str) -> pa.Table:
    return lance.dataset(uri).to_table(columns=["id", "embedding", "content_hash"]).sort_by("id")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def output_20k(tmp_path_factory):
    ids, vectors, hashes = corpus(20000)
    uri = str(tmp_path_factory.mktemp("out") / "vectors_out")
    write_output(uri, rows_table(ids, vectors, hashes))
    return uri, ids, vectors


@pytest.mark.slow
def test_export_of_20k_rows_equals_the_output_and_searches_like_retrieve(ray_local, output_20k, tmp_path):
    uri, ids, vectors = output_20k
    report = run_export(uri, f"lancedb://{tmp_path}/db/docs", log=lambda _: None)
    assert report.mode == "created" and report.rows == 20000
    table = table_of(str(tmp_path / "db" / "docs.lance"))
    assert table.column("id").to_pylist() == ids
    assert np.array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), vectors)

    # An exact (unindexed) LanceDB search by inner product returns what retrieve's kernel returns.
    queries = unit(np.random.default_rng(9).standard_normal((20, DIM)))
    distinct, rows, keys, _, _ = score_partition(
        queries, pa.chunked_array([pa.array(ids)]), iter([vectors]), top_k=10, query_block=64, device="cpu"
    )
    expected = [[] for _ in queries]
    for row, key in zip(rows, keys):
        expected[row].append(distinct[int(key)].as_py())
    tbl = lancedb.connect(str(tmp_path / "db")).open_table("docs")
    for q, want in zip(queries, expected):
        got = tbl.search(q).metric("dot").limit(10).to_arrow().column("id").to_pylist()
        assert got == want

    again = run_export(uri, f"lancedb://{tmp_path}/db/docs", log=lambda _: None)  # nothing changed
    assert (again.mode, again.upserted, again.deleted) == ("synced", 0, 0)


def test_a_night_exported_after_the_previous_adds_changes_and_deletes_exactly_its_documents(ray_local, tmp_path):
    ids, vectors, hashes = corpus(3000, seed=1, int_ids=True)  # int64 keys in the output and in the table
    root = tmp_path / "nightly"
    write_night(root, "v=1", rows_table(ids, vectors, hashes))
    target = f"lance://{tmp_path}/mirror.lance"
    run_export(str(root), target, log=lambda _: None)

    # Night 2: 100 documents deleted, 50 changed (new text, new vector), 200 new.
    rng = np.random.default_rng(2)
    keep = ids[100:]
    new_vectors = {i: v for i, v in zip(keep, vectors[100:])}
    new_hashes = dict(zip(keep, hashes[100:]))
    for i in keep[:50]:
        new_vectors[i], new_hashes[i] = unit(rng.standard_normal((1, DIM)))[0], f"changed-{i}"
    for n in range(200):
        new_vectors[10000 + n], new_hashes[10000 + n] = unit(rng.standard_normal((1, DIM)))[0], f"n{n}"
    night2 = sorted(new_vectors)
    write_night(
        root, "v=2", rows_table(night2, np.stack([new_vectors[i] for i in night2]), [new_hashes[i] for i in night2])
    )
    versions_before = len(lance.dataset(f"{tmp_path}/mirror.lance").versions())
    report = run_export(str(root), target, rows_per_batch=1000, log=lambda _: None)
    assert (report.mode, report.upserted, report.deleted) == ("synced", 250, 100)
    table = table_of(f"{tmp_path}/mirror.lance")
    assert table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == night2
    assert table.column("content_hash").to_pylist() == [new_hashes[i] for i in night2]
    assert np.array_equal(
        np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), np.stack([new_vectors[i] for i in night2])
    )
    # Only the night's rows were written: one upsert transaction per file holding changes (2) and one delete.
    assert len(lance.dataset(f"{tmp_path}/mirror.lance").versions()) - versions_before == 3


EXPORT_SCRIPT = """
import sys, ray
from embedrank.export import run_export
ray.init(num_cpus=2, include_dashboard=False)
run_export(sys.argv[1], sys.argv[2], rows_per_batch=int(sys.argv[3]), log=print)
"""


@pytest.mark.slow
def test_a_killed_export_rerun_gives_the_same_table(tmp_path):
    """Night 2's upserts run as many transactions; the export is killed after the first one commits."""
    ids, vectors, hashes = corpus(4000, seed=3)
    root = tmp_path / "nightly"
    write_night(root, "v=1", rows_table(ids[:1000], vectors[:1000], hashes[:1000]))
    target = str(tmp_path / "mirror.lance")
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    cmd = [sys.executable, "-c", EXPORT_SCRIPT, str(root), f"lance://{target}"]
    subprocess.run([*cmd, "1000"], check=True, env=env, capture_output=True, timeout=300)
    write_night(root, "v=2", rows_table(ids, vectors, hashes))  # 3000 new rows: 30 upsert batches of 100
    proc = subprocess.Popen([*cmd, "100"], env=env, start_new_session=True)
    first = len(lance.dataset(target).versions())
    deadline = time.time() + 240
    while time.time() < deadline and len(lance.dataset(target).versions()) < first + 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_rows = lance.dataset(target).count_rows()
    assert 1000 < killed_rows < 4000, "the kill should land between the first and the last transaction"
    subprocess.run([*cmd, "100"], check=True, env=env, capture_output=True, timeout=300)
    table = table_of(target)
    assert table.column("id").to_pylist() == ids
    assert np.array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), vectors)


@pytest.mark.slow
def test_ivf_pq_index_keeps_recall_at_10_against_exact_search(ray_local, output_20k, tmp_path):
    uri, ids, vectors = output_20k
    params = {"num_partitions": 32, "num_sub_vectors": 8}
    run_export(uri, f"lancedb://{tmp_path}/db/docs", index="ivf_pq", index_params=params, log=lambda _: None)
    tbl = lancedb.connect(str(tmp_path / "db")).open_table("docs")
    queries = unit(np.random.default_rng(11).standard_normal((50, DIM)))
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recalls = []
    for q, want in zip(queries, exact):
        got = tbl.search(q).metric("dot").nprobes(16).refine_factor(20).limit(10).to_arrow().column("id").to_pylist()
        recalls.append(len(set(got) & {ids[i] for i in want}) / 10)
    assert tbl.list_indices(), "the index was built"
    assert np.mean(recalls) >= 0.9


@pytest.mark.slow
def test_the_export_command_creates_then_syncs_the_table(tmp_path):
    """`embedrank export` as a user runs it: one line per run, a rerun finds nothing to change."""
    ids, vectors, hashes = corpus(500, seed=3)
    write_output(str(tmp_path / "out"), rows_table(ids, vectors, hashes), files=2)
    command = [sys.executable, "-m", "embedrank.cli", "export", "--input", str(tmp_path / "out")]
    command += ["--to", f"lancedb://{tmp_path}/db/docs", "--set", "ray.num_cpus=2"]
    for expected in ("created, 500 rows", "synced, 0 upserted, 0 deleted"):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600, start_new_session=True)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert expected in proc.stdout, proc.stdout
    assert lancedb.connect(str(tmp_path / "db")).open_table("docs").count_rows() == 500
    bad = subprocess.run([*command[:-4], "--to", "mysql://x"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
