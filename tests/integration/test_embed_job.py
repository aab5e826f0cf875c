"""The embed job end to end: local Ray (2 CPUs), a real S3 endpoint on 127.0.0.1, the tiny Qwen3 model."""

import json

import numpy as np
import pytest

from embedrank import Qwen3Embedder
from embedrank.verify import row_cosines

from .conftest import corpus_rows, kill_job, read_output, run_job, start_job, write_shard
from .reliability import check_exactly_once, record

SHARDS = [
    "a.parquet",
    "b.parquet",
    "c.jsonl",
    "d.jsonl",
    "sub/e.jsonl.gz",
    "sub/f.jsonl.gz",
    "g.jsonl.zst",
    "h.jsonl.zst",
]
ROWS_PER_SHARD = 300


@pytest.fixture(scope="module")
def corpus(s3, sample_rows):
    rows = corpus_rows(sample_rows, ROWS_PER_SHARD * len(SHARDS))
    for i, name in enumerate(SHARDS):
        write_shard(s3, f"corpus/in/{name}", rows[i * ROWS_PER_SHARD : (i + 1) * ROWS_PER_SHARD])
    return rows


@pytest.fixture(scope="module")
def expected(corpus, tiny_embedding_dir):
    emb = Qwen3Embedder.from_pretrained(tiny_embedding_dir, max_length=512)
    return {r["id"]: v for r, v in zip(corpus, emb.embed([r["text"] for r in corpus]))}


@pytest.fixture(scope="module")
def uninterrupted(corpus, s3, tmp_path_factory, s3_endpoint, tiny_embedding_dir):
    """One run over all shards during which embed actors are killed twice (os._exit in the worker)."""
    import yaml

    state = tmp_path_factory.mktemp("faults")
    config = tmp_path_factory.mktemp("cfg") / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"uri": "s3://corpus/in/", "passthrough": ["lang"]},
                "output": {"uri": "s3://corpus/out-full/"},
                "model": {"source": str(tiny_embedding_dir), "max_length": 512},
                "embed": {"batch_size": 128},
                "storage": {"endpoint_url": s3_endpoint},
                "ray": {"num_cpus": 2},
            }
        )
    )
    faults = json.dumps({"state_dir": str(state), "embed_exit_after": 3, "embed_exit_times": 2})
    # --verbose: Ray Data's execution plan is printed, which shows how its stages were fused.
    proc = run_job(config, "--verbose", env={"EMBEDRANK_FAULTS": faults})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return read_output(s3, "s3://corpus/out-full/"), proc, len(list(state.iterdir())), config


@pytest.mark.reliability
def test_every_row_exactly_once_with_actors_killed(uninterrupted, corpus, s3, job_embedder):
    table, proc, faults_fired, _ = uninterrupted
    assert faults_fired == 2, "the embed actor was meant to die twice"
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(corpus)
    stats = check_exactly_once(
        s3, "corpus/out-full", valid={r["id"]: r["text"] for r in corpus}, rejected={}, embedder=job_embedder
    )
    record("embed actor killed twice during the run", 1, stats)


def test_tokenising_stays_out_of_the_model_actors(uninterrupted):
    _, proc, _, _ = uninterrupted
    # Ray Data fuses compatible stages; the actor operator must run the model alone.
    assert "ActorPoolMapOperator[MapBatches(EmbedActor)]" in proc.stdout + proc.stderr


def test_vectors_equal_the_embedder(uninterrupted, expected):
    table, *_ = uninterrupted
    got = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    want = np.stack([expected[i] for i in table.column("id").to_pylist()])
    assert got.shape == (len(expected), 256)
    assert row_cosines(got, want).min() >= 0.99999


def test_schema_metadata_and_passthrough(uninterrupted, tiny_embedding_dir):
    table, *_ = uninterrupted
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[256]"
    assert {"n_tokens", "truncated", "content_hash", "lang"} <= set(table.column_names)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["embedrank.dim"] == "256" and meta["embedrank.normalized"] == "l2"
    assert meta["embedrank.model"] == str(tiny_embedding_dir)
    assert "embedrank.version" in meta and "embedrank.instruction" in meta


def test_report_and_manifest(uninterrupted, s3, corpus):
    _, proc, _, _ = uninterrupted
    s3.invalidate_cache()
    report = json.loads(s3.cat_file("corpus/out-full/_embedrank/report.json"))
    assert report["rows"]["read"] == report["rows"]["embedded"] == len(corpus)
    assert report["shards"]["committed"] == len(SHARDS)
    assert report["tokens"] > 0 and report["padding_efficiency"] == 1.0
    manifest = json.loads(s3.cat_file("corpus/out-full/_embedrank/manifest.json"))
    assert len(manifest["files"]) >= len(SHARDS) and manifest["rows"] == len(corpus)
    assert f"read {len(corpus)}; rows embedded {len(corpus)}, rejected 0" in proc.stdout
    assert not s3.exists("corpus/out-full/_embedrank/staging") or not s3.ls("corpus/out-full/_embedrank/staging")


def test_rerun_of_a_finished_run_embeds_nothing_and_keeps_the_report(uninterrupted, s3, corpus):
    _, _, _, config = uninterrupted
    s3.invalidate_cache()
    before = s3.cat_file("corpus/out-full/_embedrank/report.json")
    proc = run_job(config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nothing to embed" in proc.stdout and "_embedrank/report.json keeps the figures" in proc.stdout
    s3.invalidate_cache()
    assert s3.cat_file("corpus/out-full/_embedrank/report.json") == before
    assert json.loads(before)["rows"]["embedded"] == len(corpus)


# Slow: test_reliability's run killed midway is the CI case of a killed, resumed embed run.
@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(uninterrupted, s3, corpus, job_config, tmp_path):
    import time

    full, *_ = uninterrupted
    config = job_config("s3://corpus/in/", "s3://corpus/out-resume/")
    # A slower actor and small files spread the commits out, so that the kill lands between two of them.
    slow = {"EMBEDRANK_FAULTS": json.dumps({"embed_sleep_s": 0.2})}
    proc = start_job(
        config,
        "--set",
        "embed.rows_per_batch=64",
        "--set",
        "output.target_file_mb=0.001",
        env=slow,
        log=tmp_path / "killed.log",
    )
    deadline = time.time() + 240
    committed = []
    while time.time() < deadline and proc.poll() is None:
        s3.invalidate_cache()
        committed = (
            s3.ls("corpus/out-resume/_embedrank/commits") if s3.exists("corpus/out-resume/_embedrank/commits") else []
        )
        if committed:
            break
        time.sleep(0.2)
    kill_job(proc)
    s3.invalidate_cache()
    committed = (
        s3.ls("corpus/out-resume/_embedrank/commits") if s3.exists("corpus/out-resume/_embedrank/commits") else []
    )
    assert 1 <= len(committed) < len(SHARDS), (len(committed), (tmp_path / "killed.log").read_text()[-2000:])

    rerun = run_job(config)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    s3.invalidate_cache()
    report = json.loads(s3.cat_file("corpus/out-resume/_embedrank/report.json"))
    uncommitted_rows = (len(SHARDS) - len(committed)) * ROWS_PER_SHARD
    assert report["shards"]["skipped_already_committed"] == len(committed)
    assert 0 < report["rows"]["embedded"] <= uncommitted_rows

    resumed = read_output(s3, "s3://corpus/out-resume/")
    ids = resumed.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(corpus)
    by_id = dict(zip(full.column("id").to_pylist(), full.column("embedding").to_pylist()))
    got = np.asarray(resumed.column("embedding").to_pylist(), dtype=np.float32)
    want = np.asarray([by_id[i] for i in ids], dtype=np.float32)
    assert row_cosines(got, want).min() >= 0.99999

    again = run_job(config)
    assert again.returncode == 0 and "nothing to embed" in again.stdout
