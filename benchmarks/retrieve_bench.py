"""Retrieve's throughput (query x corpus pairs scored per second) beside a single-process numpy argpartition
over the same vectors, in one run.

1. numpy: `queries @ corpus.T` in blocks of queries, `np.argpartition` for each row's best k, then a sort of
   those k (what a one-process script does; its BLAS uses every core). Ties are not broken by id.
2. the scoring kernel in this process (retrieve.stages.score_partition: torch matrix products in blocks, exact
   top-k with ties broken by doc id), the corpus as one partition.
3. `embedrank retrieve` in a subprocess: the vectors committed as two embed outputs, the corpus cut into
   partitions scored by Ray tasks, candidate lists committed per query file. Pairs/s over the whole process
   (Ray start-up included) and over its streaming part.
The candidates of 2 and 3 are checked against numpy's: the same documents, up to the order of near ties.

    python benchmarks/retrieve_bench.py --queries 2000 --corpus 200000 --dim 256 --out benchmarks/results

With --dtypes, instead: the scoring kernel over the same corpus stored as float32, int8, and binary rescored
with float32 or int8 (retrieve/search.py), side by side: bytes per vector, pairs/s, and recall@10 against
exact float32. --clustered draws the vectors around 1,000 centres (real embeddings are clustered; isotropic
random vectors are binary's worst case).

    python benchmarks/retrieve_bench.py --dtypes --queries 1000 --corpus 200000 --dim 256 --clustered
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from embedrank.runtime.store import REPORT, OutputStore, committed_files

REPO = Path(__file__).resolve().parents[1]


def unit_vectors(rng, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def numpy_top_k(queries: np.ndarray, corpus: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """[Q, k] corpus rows, best first: argpartition then a sort of the k (the single-process baseline)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ corpus.T
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1)
        out[start : start + block] = np.take_along_axis(best, order, axis=1)
    return out


def kernel_top_k(queries: np.ndarray, corpus: np.ndarray, doc_ids: list[str], k: int) -> list[list[str]]:
    from embedrank.retrieve.stages import score_partition

    blocks = (corpus[s : s + 16384] for s in range(0, len(corpus), 16384))
    distinct, rows, keys, _, _ = score_partition(
        queries, pa.chunked_array([pa.array(doc_ids)]), blocks, top_k=k, query_block=4096, device="cpu"
    )
    found: list[list[str]] = [[] for _ in range(len(queries))]
    for row, key in zip(rows.tolist(), distinct.take(pa.array(keys)).to_pylist()):
        found[row].append(key)
    return found


def commit_vectors(uri: Path, ids: list[str], vectors: np.ndarray, files: int, kind: str, staging: Path) -> None:
    """The vectors as an embed output (`files` committed shards), written through the output store's commit."""
    store = OutputStore(str(uri))
    bounds = np.linspace(0, len(ids), files + 1).astype(int)
    for number, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        table = pa.table(
            {
                "id": pa.array(ids[lo:hi]),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[lo:hi].reshape(-1)), vectors.shape[1]),
                "text": pa.array(ids[lo:hi]),
            }
        )
        staged = staging / f"{kind}-{number}.parquet"
        pq.write_table(table.replace_schema_metadata({"embedrank.model": "bench", "embedrank.kind": kind}), staged)
        store.commit_shard(f"{kind}-{number}", {"data": [str(staged)]}, {"shard": {"key": f"{kind}-{number}"}})


def run_job(tmp: Path, k: int, partitions: int, corpus_rows: int, task_cpus: float, threads: int) -> dict:
    config = tmp / "retrieve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"uri": str(tmp / "queries")},
                "corpus": {"uri": str(tmp / "corpus")},
                "output": {"uri": str(tmp / "retrieved"), "top_k": k},
                "retrieve": {
                    "corpus_rows_per_task": -(-corpus_rows // partitions),
                    "num_cpus": task_cpus,
                    "torch_threads": threads,
                },
                "ray": {"num_cpus": os.cpu_count()},
                "progress_interval_s": 30,
            }
        )
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "embedrank.cli", "retrieve", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"embedrank retrieve failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    store = OutputStore(str(tmp / "retrieved"))
    return {**store.read_json(store.path(REPORT)), "process_wall_s": wall}


def job_candidates(uri: Path, query_ids: list[str]) -> list[list[str]]:
    rows = {
        r["query_id"]: [c["doc_id"] for c in r["candidates"]]
        for f in committed_files(str(uri))
        for r in pq.read_table(f).to_pylist()
    }
    return [rows[q] for q in query_ids]


def agreement(found: list[list[str]], reference: np.ndarray, doc_ids: list[str]) -> float:
    """Share of numpy's candidates also found (near ties may swap the last places)."""
    hits = sum(len(set(f) & {doc_ids[i] for i in ref}) for f, ref in zip(found, reference))
    return hits / reference.size


def clustered_vectors(rng, rows: int, dim: int, centres: np.ndarray) -> np.ndarray:
    vectors = centres[rng.integers(0, len(centres), rows)] + 0.6 * unit_vectors(rng, rows, dim)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def dtype_comparison(queries: np.ndarray, corpus: np.ndarray, k: int, rescore_k: int) -> dict:
    """The kernel over each stored form of the corpus: (bytes per vector, seconds, recall@10 vs float32)."""
    from embedrank.quantize import binarize, bytes_per_vector, calibrate, quantize_int8
    from embedrank.retrieve.search import Encoding
    from embedrank.retrieve.stages import score_partition

    dim = corpus.shape[1]
    ids = pa.chunked_array([pa.array([f"d{i:09d}" for i in range(len(corpus))])])
    rng = calibrate(corpus[:10000])
    codes, bits = quantize_int8(corpus, rng), binarize(corpus)

    def blocks(matrix):
        return lambda: (matrix[s : s + 16384] for s in range(0, len(matrix), 16384))

    forms = {
        "float32": ("float32", dict()),
        "int8": ("int8", dict(search=Encoding("int8", dim, rng))),
        f"binary + float32 rescore of {rescore_k}": (
            "binary",
            dict(
                search=Encoding("binary", dim), rescore=(Encoding("float32", dim), blocks(corpus)), rescore_k=rescore_k
            ),
        ),
        f"binary + int8 rescore of {rescore_k}": (
            "binary",
            dict(
                search=Encoding("binary", dim), rescore=(Encoding("int8", dim, rng), blocks(codes)), rescore_k=rescore_k
            ),
        ),
    }
    stored = {"float32": corpus, "int8": codes, "binary": bits}
    out, exact = {}, None
    for name, (dtype, options) in forms.items():
        start = time.perf_counter()
        distinct, rows, keys, _, _ = score_partition(
            queries, ids, blocks(stored[dtype])(), top_k=k, query_block=4096, device="cpu", **options
        )
        seconds = time.perf_counter() - start
        top10 = [set() for _ in range(len(queries))]
        seen = np.zeros(len(queries), int)
        for row, key in zip(rows, keys):  # each query's places come best first
            if seen[row] < 10:
                top10[row].add(int(key))
                seen[row] += 1
        exact = exact or top10
        recall = float(np.mean([len(a & b) / max(len(b), 1) for a, b in zip(top10, exact)]))
        extra = bytes_per_vector("float32", dim) if "float32 rescore" in name else 0
        extra += bytes_per_vector("int8", dim) if "int8 rescore" in name else 0
        out[name] = {
            "bytes_per_vector": bytes_per_vector(dtype, dim),
            "rescore_bytes_per_vector": extra,
            "seconds": seconds,
            "pairs_per_s": len(queries) * len(corpus) / seconds,
            "recall_at_10": recall,
        }
    return out


def main_dtypes(args) -> int:
    rng = np.random.default_rng(0)
    if args.clustered:
        centres = unit_vectors(rng, 1000, args.dim)
        queries = clustered_vectors(rng, args.queries, args.dim, centres)
        corpus = clustered_vectors(rng, args.corpus, args.dim, centres)
    else:
        queries, corpus = unit_vectors(rng, args.queries, args.dim), unit_vectors(rng, args.corpus, args.dim)
    torch.set_num_threads(os.cpu_count() or 1)
    score = dtype_comparison(queries[:64], corpus[:20000], args.top_k, args.rescore_k)  # warm up
    score = dtype_comparison(queries, corpus, args.top_k, args.rescore_k)
    kind = "clustered" if args.clustered else "isotropic random"
    print(
        f"\n{args.queries} queries x {args.corpus} {kind} unit vectors, dim {args.dim}, top {args.top_k}, "
        f"{os.uname().machine}, {os.cpu_count()} cpus, torch {torch.__version__}"
    )
    for name, r in score.items():
        print(
            f"  {name:34s} {r['bytes_per_vector']:5d} B/vector (+{r['rescore_bytes_per_vector']} to rescore)  "
            f"{r['pairs_per_s'] / 1e6:8.1f} M pairs/s  recall@10 {r['recall_at_10']:.4f}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "date": datetime.now(timezone.utc).isoformat(),
        "vectors": kind,
        "queries": args.queries,
        "corpus": args.corpus,
        "dim": args.dim,
        "top_k": args.top_k,
        "forms": score,
    }
    (out / f"retrieve_dtypes_{'clustered' if args.clustered else 'random'}.json").write_text(
        json.dumps(results, indent=2)
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--corpus", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--files", type=int, default=8, help="corpus files of the job's input")
    parser.add_argument("--partitions", type=int, default=4, help="corpus partitions of the job")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--dtypes", action="store_true", help="compare float32, int8 and binary+rescore instead")
    parser.add_argument("--clustered", action="store_true", help="--dtypes: vectors around 1,000 centres")
    parser.add_argument("--rescore-k", type=int, default=100, help="--dtypes: binary candidates rescored per query")
    args = parser.parse_args()
    if args.dtypes:
        return main_dtypes(args)

    rng = np.random.default_rng(0)
    queries, corpus = unit_vectors(rng, args.queries, args.dim), unit_vectors(rng, args.corpus, args.dim)
    query_ids = [f"q{i:07d}" for i in range(args.queries)]
    doc_ids = [f"d{i:09d}" for i in range(args.corpus)]
    pairs = args.queries * args.corpus
    cpus = os.cpu_count() or 1

    numpy_top_k(queries[:64], corpus, args.top_k)  # warm the BLAS
    start = time.perf_counter()
    reference = numpy_top_k(queries, corpus, args.top_k)
    numpy_s = time.perf_counter() - start

    torch.set_num_threads(cpus)
    start = time.perf_counter()
    kernel = kernel_top_k(queries, corpus, doc_ids, args.top_k)
    kernel_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        commit_vectors(tmp / "corpus", doc_ids, corpus, args.files, "document", tmp)
        commit_vectors(tmp / "queries", query_ids, queries, 2, "query", tmp)
        # One scoring task per core, one torch thread each: the cores numpy's BLAS uses, in parallel tasks.
        job = run_job(tmp, args.top_k, args.partitions, args.corpus, task_cpus=1, threads=1)
        found = job_candidates(tmp / "retrieved", query_ids)

    numpy_rate = pairs / numpy_s
    rows = {
        "numpy argpartition, one process": (numpy_rate, 1.0, None),
        "retrieve kernel in this process": (pairs / kernel_s, None, agreement(kernel, reference, doc_ids)),
        "embedrank retrieve, whole process": (
            pairs / job["process_wall_s"],
            None,
            agreement(found, reference, doc_ids),
        ),
        "embedrank retrieve, streaming part": (pairs / job["stream_s"], None, None),
    }
    results = {
        "date": datetime.now(timezone.utc).isoformat(),
        "machine": f"{os.uname().machine}, {cpus} cpus",
        "torch": torch.__version__,
        "queries": args.queries,
        "corpus": args.corpus,
        "dim": args.dim,
        "top_k": args.top_k,
        "partitions": args.partitions,
        "pairs": pairs,
        "numpy_s": numpy_s,
        "kernel_s": kernel_s,
        "job_process_s": job["process_wall_s"],
        "job_stream_s": job["stream_s"],
        "pairs_per_s": {name: rate for name, (rate, _, _) in rows.items()},
        "ratio_to_numpy": {name: rate / numpy_rate for name, (rate, _, _) in rows.items()},
        "agreement_with_numpy": {name: a for name, (_, _, a) in rows.items() if a is not None},
    }
    print(
        f"\n{args.queries} queries x {args.corpus} corpus vectors, dim {args.dim}, top {args.top_k} "
        f"({pairs / 1e6:.0f}M pairs), {results['machine']}, job: {args.partitions} partitions"
    )
    for name, (rate, _, agree) in rows.items():
        extra = f"  same candidates as numpy {agree:.4f}" if agree is not None else ""
        print(f"  {name:36s} {rate / 1e6:9.1f} M pairs/s  ratio {rate / numpy_rate:5.2f}{extra}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieve_bench.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'retrieve_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
