"""gs:// and abfs:// / az:// with the guarantees of s3://, against local emulators the tests start themselves.

CI (fast, no Ray): on each store the lock's conditional create is enforced by the endpoint, two holders are
refused, racing runs get exactly one lock, and a dead holder is taken over by a conditional replace. Slow: a
model loads from a bucket; then, through the CLI with local Ray as users run it, a job killed after its first
commit resumes to exactly-once output equal to the embedder's vectors (its model read from the bucket), the
nightly pointer moves, and two runs started at once on one output end with one output and one refusal.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from embedrank.errors import LockError, StorageError
from embedrank.io import storage
from embedrank.runtime.lock import LOCK, RunLock, hold_lock
from embedrank.runtime.store import COMMITS, OutputStore
from embedrank.verify import row_cosines

from . import object_stores as emu
from .conftest import JOB_MAX_LENGTH, corpus_rows, run_job, start_job, write_shard

quiet = lambda _: None  # noqa: E731


@pytest.fixture(scope="session")
def gcs_endpoint():
    """gcp-storage-emulator on 127.0.0.1, reached through STORAGE_EMULATOR_HOST, with a bucket `corpus`."""
    for module in ("gcsfs", "gcp_storage_emulator"):
        pytest.importorskip(module, reason="GCS tests skipped: install the dev extra (pip install -e '.[dev]')")
    before = emu.set_env(emu.GCS_ENV)  # before gcsfs is imported: it reads the variable once
    server, endpoint = emu.serve_gcs()
    emu.set_env({"STORAGE_EMULATOR_HOST": endpoint})
    fs, _ = storage.filesystem("gs://corpus")
    fs.mkdir("corpus")
    yield endpoint
    server.stop()
    emu.restore_env({**before, "STORAGE_EMULATOR_HOST": None})


@pytest.fixture(scope="session")
def azure_endpoint(tmp_path_factory):
    """Azurite on 127.0.0.1, reached through AZURE_STORAGE_CONNECTION_STRING, with a container `corpus`."""
    pytest.importorskip("adlfs", reason="Azure tests skipped: install the dev extra (pip install -e '.[dev]')")
    missing = emu.azurite_missing()
    if missing:
        pytest.skip(f"Azure tests skipped: {missing}")
    try:
        proc, endpoint = emu.start_azurite(tmp_path_factory.mktemp("azurite"))
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"Azure tests skipped: Azurite could not start: {exc}")
    before = emu.set_env({"AZURE_STORAGE_CONNECTION_STRING": emu.connection_string(endpoint)})
    fs, _ = storage.filesystem("az://corpus")
    fs.mkdir("corpus")
    yield endpoint
    emu.stop(proc)
    emu.restore_env(before)


@pytest.fixture(params=["gs", "az"])
def store_uri(request):
    """A fresh output prefix on each store: gs://corpus/... and az://corpus/..."""
    request.getfixturevalue("gcs_endpoint" if request.param == "gs" else "azure_endpoint")
    return f"{request.param}://corpus/t-{time.time_ns()}"


def fs_of(uri: str):
    fs, path = storage.filesystem(uri)
    fs.invalidate_cache()
    return fs, path


# -- CI: the lock on each store, without Ray ------------------------------------------------------------
def test_the_endpoint_enforces_create_if_absent_and_replace_if_unchanged(store_uri):
    """What the lock relies on, checked on the endpoint itself (gcp-storage-emulator alone would fail this)."""
    fs, root = fs_of(store_uri)
    path = f"{root}/lock.json"
    assert storage.create_new(fs, path, b"first")
    assert not storage.create_new(fs, path, b"second")
    assert fs.cat_file(path) == b"first"
    version = storage.version_of(fs, path)
    assert storage.replace_if(fs, path, b"third", version)
    assert not storage.replace_if(fs, path, b"fourth", version)  # the version read before is stale now
    assert fs.cat_file(path) == b"third"


def test_the_gcs_endpoint_can_come_from_the_config(gcs_endpoint, monkeypatch):
    from embedrank.config import StorageConfig

    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    fs, path = storage.filesystem(f"gs://corpus/cfg-{time.time_ns()}/x", StorageConfig(gcs_endpoint_url=gcs_endpoint))
    assert storage.create_new(fs, path, b"1") and not storage.create_new(fs, path, b"2")


def test_one_holder_a_race_and_a_dead_holder_taken_over(store_uri):
    with hold_lock(OutputStore(store_uri), "run-1", timeout_s=300, log=quiet) as first:
        with pytest.raises(LockError, match=r"being written by another run \(run-1"):
            RunLock(OutputStore(store_uri), "run-2", 300).acquire(quiet)
        first.ensure()
    store = OutputStore(store_uri)
    assert not store.fs.exists(store.path(LOCK))

    wins, losses = [], []
    barrier = threading.Barrier(4)

    def contend(i):
        barrier.wait()
        try:
            wins.append(RunLock(OutputStore(store_uri), f"race-{i}", 300).acquire(quiet))
        except LockError:
            losses.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 3
    winner = wins[0]
    winner._stop.set()  # the holder dies: no more heartbeats, its process gone
    winner._thread.join()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = json.loads(store.fs.cat_file(store.path(LOCK)))
    store.write_json(store.path(LOCK), {**holder, "host": socket.gethostname(), "pid": dead.pid})
    lines = []
    taker = RunLock(OutputStore(store_uri), "run-3", 300).acquire(lines.append)
    assert any("took over" in line and winner.run_id in line for line in lines), lines
    with pytest.raises(LockError, match="lost its output lock"):
        winner.ensure()
    taker.release()


@pytest.mark.slow  # the test checkpoint is 190 MB: about 10 s per store
def test_a_model_loads_from_a_bucket(store_uri, tiny_embedding_dir, tmp_path, monkeypatch):
    from embedrank import Qwen3Embedder

    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "cache"))
    fs, root = fs_of(store_uri)
    for f in tiny_embedding_dir.iterdir():
        fs.put_file(str(f), f"{root}/model/{f.name}")
    texts = ["a short text", "and another one, a little longer than the first"]
    remote = Qwen3Embedder.from_pretrained(f"{store_uri}/model").embed(texts)
    np.testing.assert_array_equal(remote, Qwen3Embedder.from_pretrained(tiny_embedding_dir).embed(texts))


def test_storage_errors_are_one_line_naming_the_bucket_and_the_fix(monkeypatch):
    AzureBlobFileSystem = pytest.importorskip("adlfs").AzureBlobFileSystem

    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    AzureBlobFileSystem.clear_instance_cache()  # an instance made with Azurite's connection string would answer
    try:
        with pytest.raises(StorageError, match=r"az://models/x: .*bucket 'models'.*AZURE_STORAGE_ACCOUNT_NAME") as err:
            storage.filesystem("az://models/x")
    finally:
        AzureBlobFileSystem.clear_instance_cache()
    assert "\n" not in str(err.value)
    with pytest.raises(StorageError, match="the scheme hdfs:// is not supported; use s3://, gs://, abfs://"):
        storage.filesystem("hdfs://namenode/corpus")
    exc = storage.explain(PermissionError("403 Forbidden"), "gs://private/in/")
    assert (
        str(exc)
        == "gs://private/in/: PermissionError on bucket 'private': check the credentials or role and the bucket policy"
    )
    exc = storage.explain(RuntimeError("401 Anonymous caller does not have access"), "gs://b/in/")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(exc) and "bucket 'b'" in str(exc)


def test_uris_keep_their_store_and_account():
    pytest.importorskip("adlfs")
    assert storage.bucket_of("abfs://data@acct.dfs.core.windows.net/in/") == "acct/data"
    fs, path = storage.filesystem("abfs://data@acct.dfs.core.windows.net/in/a.parquet")
    assert path == "data/in/a.parquet" and fs.account_name == "acct"
    assert storage.to_uri(fs, path) == "abfs://data@acct.dfs.core.windows.net/in/a.parquet"
    assert storage.storage_options(None) == {}


# -- slow: jobs through the CLI on each store ------------------------------------------------------------
def job_config(folder, input_uri: str, output_uri: str, model: str, **sections):
    import yaml

    cfg = {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri},
        "model": {"source": model, "max_length": JOB_MAX_LENGTH},
        "embed": {"rows_per_batch": 64},
        "prepare": {"rows_per_batch": 200},
        "ray": {"num_cpus": 2},
        "progress_interval_s": 2,
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    path = folder / f"job-{len(list(folder.glob('job-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_output(uri: str):
    """The committed vectors of a job output on any store, read as users read them (pyarrow.dataset)."""
    import pyarrow.dataset as ds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = fs_of(uri)
    return ds.dataset(f"{path}/vectors", format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs))).to_table()


def check_output(uri: str, rows: list[dict], job_embedder) -> None:
    """Every row exactly once, each vector equal to the in-process embedder's (fp32 reference)."""
    out = read_output(uri)
    ids = out.column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(ids) == len(set(ids))
    text = {r["id"]: r["text"] for r in rows}
    want = job_embedder.embed([text[i] for i in ids])
    got = np.asarray(out.column("embedding").to_pylist(), np.float32)
    assert row_cosines(got, want).min() >= 0.99999


@pytest.mark.slow
def test_a_job_killed_after_a_commit_resumes_and_the_nightly_pointer_moves(
    store_uri, tiny_embedding_dir, sample_rows, job_embedder, tmp_path
):
    fs, root = fs_of(store_uri)
    for f in tiny_embedding_dir.iterdir():
        fs.put_file(str(f), f"{root}/model/{f.name}")
    rows = corpus_rows(sample_rows, 240, prefix="o")
    for i, name in enumerate(["a.jsonl", "b.parquet", "c.jsonl.gz"]):
        write_shard(fs, f"{root}/in/{name}", rows[i * 80 : (i + 1) * 80])
    out = f"{store_uri}/out"
    config = job_config(tmp_path, f"{store_uri}/in/", out, f"{store_uri}/model")

    kill = {"EMBEDRANK_FAULTS": json.dumps({"driver_kill_at": "committed", "driver_kill_count": 1})}
    killed = run_job(config, env=kill)
    assert killed.returncode != 0, killed.stdout[-2000:] + killed.stderr[-2000:]
    fs.invalidate_cache()
    kept = {p: fs.cat_file(p) for p in fs.ls(f"{root}/out/{COMMITS}", detail=False)}
    assert len(kept) == 1, kept  # killed after its first commit
    proc = run_job(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fs.invalidate_cache()
    for path, record in kept.items():  # the committed shard was not redone
        assert fs.cat_file(path) == record
    check_output(out, rows, job_embedder)

    nightly_root = f"{store_uri}/nightly"
    night = job_config(tmp_path, f"{store_uri}/in/", nightly_root, f"{store_uri}/model")
    assert run_job(night, command="nightly").returncode == 0
    fs.invalidate_cache()
    first = fs.cat_file(f"{root}/nightly/_CURRENT").decode()
    rows[0] = {**rows[0], "text": rows[0]["text"] + " (revised)"}
    write_shard(fs, f"{root}/in/a.jsonl", rows[:80])
    proc = run_job(night, command="nightly")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fs.invalidate_cache()
    second = fs.cat_file(f"{root}/nightly/_CURRENT").decode()
    assert second != first
    report = json.loads(fs.cat_file(f"{root}/nightly/_embedrank/report.json"))
    assert report["nightly"]["changed"] == 1 and report["rows_through_model"] == 1
    check_output(f"{nightly_root}/{second}", rows, job_embedder)


@pytest.mark.slow
def test_two_runs_at_once_on_one_output(store_uri, tiny_embedding_dir, sample_rows, job_embedder, tmp_path):
    fs, root = fs_of(store_uri)
    rows = corpus_rows(sample_rows, 120, prefix="t")
    for i in range(2):
        write_shard(fs, f"{root}/in/p{i}.jsonl", rows[i * 60 : (i + 1) * 60])
    out = f"{store_uri}/out"
    config = job_config(tmp_path, f"{store_uri}/in/", out, str(tiny_embedding_dir))
    slow = {"EMBEDRANK_FAULTS": json.dumps({"embed_sleep_s": 0.5})}
    procs = [start_job(config, env=slow, log=tmp_path / f"run-{i}.log") for i in range(2)]
    codes = [p.wait(timeout=400) for p in procs]
    logs = [(tmp_path / f"run-{i}.log").read_text() for i in range(2)]
    assert sorted(codes) == [0, 2], logs
    refused = logs[codes.index(2)]
    assert "is being written by another run" in refused, refused[-2000:]
    check_output(out, rows, job_embedder)
