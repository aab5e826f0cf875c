"""`ray job submit` to a real multi-node Ray cluster: embed, rerank and nightly, exactly once, work off the head.

The jobs are submitted as the README says, with the repo's configs (a laptop config included: its
`ray.num_cpus` must not matter on a cluster), reading and writing the local S3 endpoint.
"""

import json

import pytest

from .cluster import start_cluster
from .conftest import CREDENTIALS, corpus_rows, read_output
from .reliability import check_exactly_once

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    import shutil
    import tempfile
    from pathlib import Path

    # A short folder: Ray's Unix sockets live under --temp-dir, and their paths may not exceed 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="er-", dir="/tmp"))
    cluster = start_cluster(root, CREDENTIALS)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


def job_args(s3_endpoint, model_dir, *extra):
    return ("--model", str(model_dir), "--set", f"storage.endpoint_url={s3_endpoint}",
            "--set", "model.max_length=128", "--set", "progress_interval_s=2", *extra)


def test_embed_job_submitted_to_the_cluster(cluster, s3, s3_endpoint, sample_rows, tiny_embedding_dir,
                                           job_embedder):
    rows = corpus_rows(sample_rows, 120, prefix="c")
    for part in range(3):
        s3.pipe_file(f"corpus/cluster-in/part-{part}.jsonl",
                     "".join(json.dumps(r) + "\n" for r in rows[part * 40:(part + 1) * 40]).encode())
    proc = cluster.submit("python", "jobs/embed.py", "--config", "configs/local.yaml",
                          "--input", "s3://corpus/cluster-in/", "--output", "s3://corpus/cluster-out/",
                          *job_args(s3_endpoint, tiny_embedding_dir, "--set", "input.passthrough=[]"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout
    texts = {r["id"]: r["text"] for r in rows}
    from embedrank.models.tokenization import EmbeddingTokenizer  # noqa: F401  (the embedder's max_length)
    from embedrank import Qwen3Embedder

    embedder = Qwen3Embedder.from_pretrained(tiny_embedding_dir, max_length=128)
    check_exactly_once(s3, "corpus/cluster-out", valid=texts, rejected={}, embedder=embedder)
    # The driver joined the cluster (its actors are the cluster's) and the model ran off the head.
    nodes = cluster.node_of_actors("EmbedActor")
    assert nodes and cluster.head_node_id() not in nodes


def test_rerank_and_nightly_jobs_submitted_to_the_cluster(cluster, s3, s3_endpoint, tiny_reranker_dir,
                                                         tiny_embedding_dir):
    proc = cluster.submit("python", "jobs/rerank.py", "--config", "configs/rerank-local.yaml",
                          "--output", "s3://corpus/cluster-reranked/",
                          *job_args(s3_endpoint, tiny_reranker_dir))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    ranked = read_output(s3, "s3://corpus/cluster-reranked/")
    assert ranked.num_rows == 30 * 5  # 30 queries, top_k 5
    assert cluster.head_node_id() not in cluster.node_of_actors("RerankActor")

    s3.pipe_file("corpus/cluster-nightly-in/a.jsonl",
                 b"".join(json.dumps({"id": f"n{i}", "text": f"nightly text {i}"}).encode() + b"\n"
                          for i in range(30)))
    nightly = ("python", "jobs/nightly.py", "--config", "configs/nightly.yaml",
               "--input", "s3://corpus/cluster-nightly-in/", "--output", "s3://corpus/cluster-nightly/",
               *job_args(s3_endpoint, tiny_embedding_dir, "--set", "embed.num_gpus=0", "--set", "embed.num_cpus=1",
                         "--set", "model.dtype=fp32", "--set", "storage.region=null"))
    proc = cluster.submit(*nightly)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    s3.invalidate_cache()
    version = s3.cat_file("corpus/cluster-nightly/_CURRENT").decode()
    assert read_output(s3, f"s3://corpus/cluster-nightly/{version}/").num_rows == 30
