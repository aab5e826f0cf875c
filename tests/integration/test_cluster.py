"""`ray job submit` to a real multi-node Ray cluster: embed, rerank and nightly, exactly once, work off the head.

The jobs are submitted as the README says, with the repo's configs (a laptop config included: its
`ray.num_cpus` must not matter on a cluster), reading and writing the local S3 endpoint. The slow scenarios
interrupt a job (`ray job stop`, a worker node's raylet killed) and resubmit it; the fast ones check that a
cluster that cannot be joined stops the job in one line naming the fix.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from .cluster import REPO, free_port, start_cluster
from .conftest import CREDENTIALS, corpus_rows, read_output
from .reliability import check_exactly_once, record

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
    return (
        "--model",
        str(model_dir),
        "--set",
        f"storage.endpoint_url={s3_endpoint}",
        "--set",
        "model.max_length=128",
        "--set",
        "progress_interval_s=2",
        *extra,
    )


def test_embed_job_submitted_to_the_cluster(cluster, s3, s3_endpoint, sample_rows, tiny_embedding_dir, job_embedder):
    rows = corpus_rows(sample_rows, 120, prefix="c")
    for part in range(3):
        s3.pipe_file(
            f"corpus/cluster-in/part-{part}.jsonl",
            "".join(json.dumps(r) + "\n" for r in rows[part * 40 : (part + 1) * 40]).encode(),
        )
    proc = cluster.submit(
        "python",
        "jobs/embed.py",
        "--config",
        "configs/local.yaml",
        "--input",
        "s3://corpus/cluster-in/",
        "--output",
        "s3://corpus/cluster-out/",
        *job_args(s3_endpoint, tiny_embedding_dir, "--set", "input.passthrough=[]"),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout
    texts = {r["id"]: r["text"] for r in rows}
    from embedrank import Qwen3Embedder
    from embedrank.models.tokenization import EmbeddingTokenizer  # noqa: F401  (the embedder's max_length)

    embedder = Qwen3Embedder.from_pretrained(tiny_embedding_dir, max_length=128)
    check_exactly_once(s3, "corpus/cluster-out", valid=texts, rejected={}, embedder=embedder)
    # The driver joined the cluster (its actors are the cluster's) and the model ran off the head.
    nodes = cluster.node_of_actors("EmbedActor")
    assert nodes and cluster.head_node_id() not in nodes


def test_rerank_and_nightly_jobs_submitted_to_the_cluster(
    cluster, s3, s3_endpoint, tiny_reranker_dir, tiny_embedding_dir
):
    proc = cluster.submit(
        "python",
        "jobs/rerank.py",
        "--config",
        "configs/rerank-local.yaml",
        "--output",
        "s3://corpus/cluster-reranked/",
        *job_args(s3_endpoint, tiny_reranker_dir),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    ranked = read_output(s3, "s3://corpus/cluster-reranked/")
    assert ranked.num_rows == 30 * 5  # 30 queries, top_k 5
    assert cluster.head_node_id() not in cluster.node_of_actors("RerankActor")

    s3.pipe_file(
        "corpus/cluster-nightly-in/a.jsonl",
        b"".join(json.dumps({"id": f"n{i}", "text": f"nightly text {i}"}).encode() + b"\n" for i in range(30)),
    )
    nightly = (
        "python",
        "jobs/nightly.py",
        "--config",
        "configs/nightly.yaml",
        "--input",
        "s3://corpus/cluster-nightly-in/",
        "--output",
        "s3://corpus/cluster-nightly/",
        *job_args(
            s3_endpoint,
            tiny_embedding_dir,
            "--set",
            "embed.num_gpus=0",
            "--set",
            "embed.num_cpus=1",
            "--set",
            "model.dtype=fp32",
            "--set",
            "storage.region=null",
        ),
    )
    proc = cluster.submit(*nightly)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    s3.invalidate_cache()
    version = s3.cat_file("corpus/cluster-nightly/_CURRENT").decode()
    assert read_output(s3, f"s3://corpus/cluster-nightly/{version}/").num_rows == 30


# -- a cluster that cannot be joined: exit code 2 and one line naming the cause and the fix --------------------


def client_env(**extra) -> dict:
    """The environment of a client that knows nothing of the test cluster: no address, no token."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "EMBEDRANK_FAULTS"):
        if name not in extra:
            env.pop(name, None)
    return env


def cli_embed(tmp_path, model_dir, address: str, env: dict) -> subprocess.CompletedProcess:
    """`embedrank embed` of a one-row local corpus with ray.address set, as a user runs it."""
    corpus = tmp_path / "in.jsonl"
    corpus.write_text(json.dumps({"id": "x", "text": "one row of text"}) + "\n")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "embedrank.cli",
            "embed",
            "--config",
            "configs/local.yaml",
            "--input",
            str(corpus),
            "--output",
            str(tmp_path / "out"),
            "--model",
            str(model_dir),
            "--set",
            "input.passthrough=[]",
            "--set",
            f"ray.address={address}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """The error line of a run that failed as a user error, after checking it names each of `names`."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-4000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("embedrank embed: error: "), proc.stderr[-4000:]
    for name in names:
        assert name in line, (name, line)
    return line


def test_unreachable_address_stops_the_job_in_one_line(tmp_path, tiny_embedding_dir):
    address = f"127.0.0.1:{free_port()}"  # a port bound and closed again: nothing listens there
    started = time.time()
    proc = cli_embed(tmp_path, tiny_embedding_dir, address, client_env())
    one_line_error(
        proc,
        f"cannot reach the Ray cluster at {address} (ray.address)",
        "connection refused",
        f"ray status --address {address}",
    )
    assert time.time() - started < 120  # ray.init alone retries such an address for about 14 minutes


@pytest.mark.parametrize("token", ["missing", "wrong"])
def test_cluster_refusing_the_token_stops_the_job_in_one_line(cluster, tmp_path, tiny_embedding_dir, token):
    if token == "missing":  # and no ~/.ray/auth_token either, which Ray would send instead
        env = client_env(HOME=str(tmp_path))
        expected = ("requires a token and this client sends none", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN")
    else:
        env = client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-cluster-token")
        expected = ("refused the token in RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    proc = cli_embed(tmp_path, tiny_embedding_dir, cluster.gcs, env)
    one_line_error(proc, f"the Ray cluster at {cluster.gcs} (ray.address)", *expected)


def test_jobs_api_address_is_not_a_job_address(cluster):
    """An http:// address is what `ray job submit` takes; given to a job, it stops before ray.init, saying
    whether a Jobs API answers there (Ray's own error is a multi-line ValueError either way)."""
    from embedrank.runtime.connect import JobsApiAddressError, join_cluster

    with pytest.raises(JobsApiAddressError) as live:
        join_cluster(cluster.dashboard, "RAY_ADDRESS")
    message = str(live.value)
    assert "\n" not in message and "is the Jobs API of a Ray cluster (token authentication on)" in message
    assert f"ray job submit --address {cluster.dashboard}" in message and "unset RAY_ADDRESS" in message

    # A head without the Jobs API (Ray's minimal install runs no dashboard): nothing answers on its port.
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(JobsApiAddressError) as absent:
        join_cluster(closed, "ray.address")
    message = str(absent.value)
    assert "\n" not in message and "no Ray Jobs API answers there" in message
    assert "embedrank[cluster]" in message and "127.0.0.1:6379" in message


# -- interrupted jobs, resubmitted: exactly once ------------------------------------------------------------

# 12 files of 100 rows, each read by a task of its own (prepare.mb_per_task tiny), embedded 20 rows to a model
# batch and written 256 rows to a file (the fewest embed/job.py writes, with a tiny output.target_file_mb):
# shards commit in steps some 13 batches apart, so that midway a job has committed some shards, not all.
SLOW_SHARDS, SLOW_ROWS = 12, 100
SLOW_INPUT = "corpus/cluster-slow-in"


@pytest.fixture(scope="module")
def slow_corpus(s3, sample_rows) -> dict[str, str]:
    rows = corpus_rows(sample_rows, SLOW_SHARDS * SLOW_ROWS, prefix="s")
    for part in range(SLOW_SHARDS):
        s3.pipe_file(
            f"{SLOW_INPUT}/part-{part}.jsonl",
            "".join(json.dumps(r) + "\n" for r in rows[part * SLOW_ROWS : (part + 1) * SLOW_ROWS]).encode(),
        )
    return {r["id"]: r["text"] for r in rows}


@pytest.fixture(scope="module")
def slow_runtime_env(tmp_path_factory) -> str:
    """infra/runtime_env.yaml plus a fault plan that makes every model batch sleep a second: a job stays midway,
    between two of its commits, long enough to be stopped or to lose its node."""
    import yaml

    env = yaml.safe_load((REPO / "infra" / "runtime_env.yaml").read_text())
    env["working_dir"] = str(REPO)
    env["py_modules"] = [str(REPO / module) for module in env["py_modules"]]
    env["env_vars"]["EMBEDRANK_FAULTS"] = json.dumps({"embed_sleep_s": 1})
    path = tmp_path_factory.mktemp("runtime-env") / "slow-embed.yaml"
    path.write_text(yaml.safe_dump(env))
    return str(path)


@pytest.fixture(scope="module")
def cluster_embedder(tiny_embedding_dir):
    from embedrank import Qwen3Embedder

    return Qwen3Embedder.from_pretrained(tiny_embedding_dir, max_length=128)


def submit_embed(
    cluster,
    s3_endpoint,
    model_dir,
    output: str,
    submission_id: str,
    wait: bool,
    runtime_env: str = "infra/runtime_env.yaml",
) -> subprocess.CompletedProcess:
    """The embed job of the slow scenarios; each interrupted run is slowed by its `runtime_env` (the resubmit,
    the same command, runs at full speed)."""
    proc = cluster.submit(
        "python",
        "jobs/embed.py",
        "--config",
        "configs/local.yaml",
        "--input",
        f"s3://{SLOW_INPUT}/",
        "--output",
        f"s3://{output}/",
        *job_args(
            s3_endpoint,
            model_dir,
            "--set",
            "input.passthrough=[]",
            "--set",
            "embed.rows_per_batch=20",
            "--set",
            "output.target_file_mb=0.05",
            "--set",
            "prepare.mb_per_task=0.01",
        ),
        runtime_env=runtime_env,
        wait=wait,
        extra=("--submission-id", submission_id),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


def commit_records(s3, root: str) -> dict[str, dict]:
    from embedrank.runtime.store import COMMITS

    s3.invalidate_cache()
    folder = f"{root}/{COMMITS}"
    return {p.rsplit("/", 1)[-1]: json.loads(s3.cat_file(p)) for p in (s3.ls(folder) if s3.exists(folder) else [])}


def read_lock(s3, root: str) -> dict | None:
    from embedrank.runtime.lock import LOCK

    s3.invalidate_cache()
    return json.loads(s3.cat_file(f"{root}/{LOCK}")) if s3.exists(f"{root}/{LOCK}") else None


def wait_until_midway(cluster, s3, root: str, submission_id: str, timeout: float = 900) -> None:
    """Wait until the job has committed a shard: the moment to interrupt it."""
    jobs, deadline = cluster.jobs(), time.time() + timeout
    while time.time() < deadline:
        if commit_records(s3, root):
            return
        status = str(jobs.get_job_status(submission_id).value)
        assert status in ("PENDING", "RUNNING"), (status, jobs.get_job_logs(submission_id)[-4000:])
        time.sleep(0.5)
    raise TimeoutError(f"{submission_id} committed no shard in {timeout:.0f} s")


def check_resubmitted(s3, root: str, before: dict[str, dict], valid: dict[str, str], embedder) -> dict:
    """Shards committed before the interruption are kept as they were; the resubmit committed the rest, once
    each, in one run; every row is in the output once, with the embedder's vector."""
    after = commit_records(s3, root)
    assert {key: after.get(key) for key in before} == before, "a shard committed before was committed again"
    assert len(after) == SLOW_SHARDS
    assert len({after[key]["run_id"] for key in set(after) - set(before)}) <= 1
    return check_exactly_once(s3, root, valid=valid, rejected={}, embedder=embedder)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.reliability
def test_job_stopped_midway_and_resubmitted_is_exactly_once(
    cluster, s3, s3_endpoint, slow_corpus, slow_runtime_env, tiny_embedding_dir, cluster_embedder
):
    root = "corpus/cluster-stopped"
    submit_embed(
        cluster, s3_endpoint, tiny_embedding_dir, root, "embed-stopped-1", wait=False, runtime_env=slow_runtime_env
    )
    wait_until_midway(cluster, s3, root, "embed-stopped-1")
    assert cluster.jobs().stop_job("embed-stopped-1")
    assert cluster.wait_job("embed-stopped-1", timeout=120) == "STOPPED"
    before = commit_records(s3, root)
    assert 0 < len(before) < SLOW_SHARDS, f"{len(before)} shards committed when the job stopped"
    # `ray job stop` sends the driver SIGTERM (SIGKILL 3 s later): it gives its output lock back on the way out,
    # or leaves one naming its process on this host, now gone, which the next run takes over at once.
    lock = read_lock(s3, root)
    assert lock is None or (lock["host"] == socket.gethostname() and not pid_alive(lock["pid"])), lock

    proc = submit_embed(cluster, s3_endpoint, tiny_embedding_dir, root, "embed-stopped-2", wait=True)
    assert "succeeded" in proc.stdout
    assert "output.lock_timeout_s" not in proc.stdout, "the resubmit waited for the stopped job's lock"
    stats = check_resubmitted(s3, root, before, slow_corpus, cluster_embedder)
    record(f"cluster: ray job stop with {len(before)}/{SLOW_SHARDS} shards committed, resubmitted", 2, stats)


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize("new_node", ["while the job runs", "after the job is stopped"])
def test_worker_node_dying_midway_then_a_resubmit_is_exactly_once(
    cluster, s3, s3_endpoint, slow_corpus, slow_runtime_env, tiny_embedding_dir, cluster_embedder, new_node
):
    """The only worker node's raylet is SIGKILLed mid-job (its `ray start --block` exits with it), which leaves
    the job nowhere to run. A new node joins, as an autoscaler or KubeRay would start one: while the job still
    runs (Ray retries its tasks and restarts its actors there, or the run fails), or after the stuck job was
    stopped. Either way a resubmit ends with every row committed once. The cluster keeps the new node."""
    variant = "running" if new_node == "while the job runs" else "stopped"
    root, first = f"corpus/cluster-node-died-{variant}", f"embed-node-died-{variant}-1"
    submit_embed(cluster, s3_endpoint, tiny_embedding_dir, root, first, wait=False, runtime_env=slow_runtime_env)
    wait_until_midway(cluster, s3, root, first)
    (worker,) = cluster.live_workers()
    os.kill(cluster.raylet_pid(worker), signal.SIGKILL)
    cluster.wait_node_gone(worker)
    cluster.wait_cpus(0)  # the head has none: no node can run the job now
    if variant == "stopped":
        assert cluster.jobs().stop_job(first), "the job ended by itself when its only worker node died"
        outcome = cluster.wait_job(first, timeout=120).lower()
        assert len(commit_records(s3, root)) < SLOW_SHARDS
    cluster.add_worker(f"worker-{len(cluster.nodes)}", cpus=3)
    if variant == "running":
        try:
            outcome = cluster.wait_job(first, timeout=600).lower()
        except TimeoutError:  # still not done 10 minutes after the new node joined: what an operator stops
            cluster.jobs().stop_job(first)
            outcome = f"{cluster.wait_job(first, timeout=120).lower()} by the test after 10 minutes"
    before = commit_records(s3, root)

    proc = submit_embed(cluster, s3_endpoint, tiny_embedding_dir, root, f"embed-node-died-{variant}-2", wait=True)
    assert "succeeded" in proc.stdout
    stats = check_resubmitted(s3, root, before, slow_corpus, cluster_embedder)
    record(
        f"cluster: worker node killed midway, new node {new_node}: first run {outcome}, "
        f"{SLOW_SHARDS - len(before)} shards left to the resubmit",
        2,
        stats,
    )
