"""Reliability scenarios: faults injected into real runs (local Ray, the local S3 endpoint, the tiny model).

Each scenario ends with `check_exactly_once` on the committed output and adds a line to the reliability table.
Every job here runs with a canary AWS secret key; the last test looks for it everywhere a run leaves text.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import job_command, job_env, read_output, run_job, write_shard
from .reliability import check_exactly_once, record

pytestmark = pytest.mark.reliability

CANARY = "embedrank-canary-7f3c1e9a0b2d4c6e8f1a3b5c7d9e0f2a"
SHARD_NAMES = ["a.parquet", "b.parquet", "c.jsonl", "d.jsonl", "e.jsonl.gz", "f.parquet"]
PER_SHARD = 40
CAPTURED: list[str] = []  # every run's stdout and stderr, scanned for the canary at the end


def make_files(sample_rows, prefix: str, names=SHARD_NAMES) -> dict[str, list[dict]]:
    """PER_SHARD good rows per file of skewed lengths; c.jsonl also holds four bad rows."""
    files = {}
    for s, name in enumerate(names):
        rows = []
        for i in range(PER_SHARD):
            src = sample_rows[(s * PER_SHARD + i) % len(sample_rows)]["text"]
            rows.append({"id": f"{prefix}{name[0]}{i:03d}", "text": f"{name} {i}: " + src[: [80, 300, 900][i % 3]]})
        if name == "c.jsonl":
            rows += [
                {"id": f"{prefix}c-null", "text": None},
                {"id": f"{prefix}c-blank", "text": " \t\n"},
                {"id": f"{prefix}c-nul", "text": "a \x00 b"},
                {"id": f"{prefix}c000", "text": "id used before"},
            ]
        files[name] = rows
    return files


def expectations(files: dict[str, list[dict]]) -> tuple[dict[str, str], dict[str, str]]:
    """(id -> text of the rows to embed, id -> reason of the rows to dead-letter), by the documented rules."""
    valid, rejected = {}, {}
    for rows in files.values():
        for row in rows:
            text = row["text"]
            reason = (
                "null_text"
                if text is None
                else "empty_text"
                if not text.strip()
                else "nul_bytes"
                if "\x00" in text
                else "duplicate_id"
                if row["id"] in valid
                else None
            )
            if reason:
                rejected[row["id"]] = reason
            else:
                valid[row["id"]] = text
    return valid, rejected


def upload(s3, prefix: str, files: dict[str, list[dict]]) -> None:
    for name, rows in files.items():
        write_shard(s3, f"{prefix}/{name}", rows)


@pytest.fixture(scope="module")
def ray_tmp():
    """A Ray temp dir of this module's own (short: Ray's socket paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="er-ray-", dir="/tmp"))


@pytest.fixture(scope="module")
def env(ray_tmp):
    return {"AWS_SECRET_ACCESS_KEY": CANARY, "RAY_TMPDIR": str(ray_tmp)}


@pytest.fixture(scope="module")
def corpus(s3, sample_rows):
    files = make_files(sample_rows, "")
    upload(s3, "corpus/rel-in", files)
    return files


@pytest.fixture(scope="module")
def config(job_config_module):
    def make(name: str, input_uri: str = "s3://corpus/rel-in/", **sections):
        sections.setdefault("embed", {}).setdefault("batch_size", 32)
        sections.setdefault("output", {}).setdefault("target_file_mb", 0.05)
        return job_config_module(input_uri, f"s3://corpus/{name}/", **sections)

    return make


def job(config_path, env, *args, expect: int | None = 0, command: str = "embed", faults: dict | None = None):
    run_env = {**env, **({"EMBEDRANK_FAULTS": json.dumps(faults)} if faults else {})}
    proc = run_job(config_path, *args, env=run_env, command=command)
    CAPTURED.append(proc.stdout + proc.stderr)
    if expect is not None:
        assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def commit_records(s3, root: str) -> dict[str, dict]:
    s3.invalidate_cache()
    if not s3.exists(f"{root}/_embedrank/commits"):
        return {}
    return {p.rsplit("/", 1)[-1]: json.loads(s3.cat_file(p)) for p in s3.ls(f"{root}/_embedrank/commits")}


def test_s3_throttling_on_a_fifth_of_requests(s3, faulty_s3, corpus, config, env, job_embedder):
    endpoint, faults = faulty_s3
    cfg = config("rel-throttled", storage={"endpoint_url": endpoint})
    faults.reset()
    faults.throttle_every = 5
    try:
        job(cfg, env)
        counts = dict(faults.counts)
    finally:
        faults.reset()
    assert counts.get("throttled_reads", 0) > 5 and counts.get("throttled_writes", 0) > 5, counts
    valid, rejected = expectations(corpus)
    stats = check_exactly_once(s3, "corpus/rel-throttled", valid=valid, rejected=rejected, embedder=job_embedder)
    record("S3 503 SlowDown on 1 request in 5, reads and writes", 1, stats)


@pytest.mark.slow  # the faulty endpoint stays in CI through the throttling scenario
def test_persistent_write_failure_keeps_the_previous_version(s3, faulty_s3, sample_rows, config, env, job_embedder):
    endpoint, faults = faulty_s3
    files = make_files(sample_rows, "p-", names=SHARD_NAMES[:2])
    upload(s3, "corpus/rel-denied-in", files)
    cfg = config("rel-denied", input_uri="s3://corpus/rel-denied-in/", storage={"endpoint_url": endpoint})
    job(cfg, env)
    s3.invalidate_cache()
    before = {p: s3.info(p)["ETag"] for p in s3.find("corpus/rel-denied")}
    upload(s3, "corpus/rel-denied-in", make_files(sample_rows, "p-", names=["g.jsonl"]))  # new work tonight

    faults.reset()
    try:
        faults.deny_writes = "corpus/rel-denied"  # every write: fails while taking the lock, before any work
        first = job(cfg, env, expect=2)
        faults.deny_writes = "corpus/rel-denied/_embedrank/staging"  # only the data: fails in the write tasks
        second = job(cfg, env, expect=2)
        denied = faults.counts.get("denied", 0)
    finally:
        faults.reset()
    assert denied >= 2
    for proc in (first, second):
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("embedrank embed: error: s3://corpus/rel-denied"), last
        assert "PermissionError on bucket 'corpus': check the credentials or role and the bucket policy" in last
    s3.invalidate_cache()
    after = {p: s3.info(p)["ETag"] for p in s3.find("corpus/rel-denied") if "/_embedrank/staging/" not in p}
    assert after == before, set(after) ^ set(before)
    valid, rejected = expectations(files)
    stats = check_exactly_once(s3, "corpus/rel-denied", valid=valid, rejected=rejected, embedder=job_embedder)
    record("403 on every write / on every data write (previous version kept)", 3, stats)


@pytest.mark.slow  # killed processes stay in CI through the actor kills and the run killed midway
def test_write_task_killed_after_uploading_part_of_its_output(s3, corpus, config, env, job_embedder, tmp_path):
    cfg = config("rel-write-killed")
    job(cfg, env, faults={"state_dir": str(tmp_path), "write_exit_times": 3})
    assert len(list(tmp_path.iterdir())) == 3, "three write tasks were meant to die mid-way"
    again = job(cfg, env)
    assert "nothing to embed" in again.stdout
    valid, rejected = expectations(corpus)
    stats = check_exactly_once(s3, "corpus/rel-write-killed", valid=valid, rejected=rejected, embedder=job_embedder)
    record("write task killed after uploading part of its output (x3)", 2, stats)


@pytest.mark.slow
def test_driver_sigkill_at_five_points(s3, corpus, config, env, job_embedder):
    rng = random.Random(7)
    points = [
        ("planned", 1),
        ("staged", rng.randint(1, 3)),
        ("moving", 1),
        ("committed", rng.randint(1, 2)),
        ("published", 1),
    ]
    root = "corpus/rel-driver-killed"
    cfg = config("rel-driver-killed")
    committed_before: dict[str, dict] = {}
    for point, count in points:
        proc = job(cfg, env, expect=None, faults={"driver_kill_at": point, "driver_kill_count": count})
        assert proc.returncode == -9, (point, proc.returncode, proc.stderr[-2000:])
        records = commit_records(s3, root)
        # What was committed stays committed, untouched: a rerun redoes only the uncommitted shards.
        for key, rec in committed_before.items():
            assert records[key] == rec, f"{key} was committed again after the kill at {point}"
        for rec in records.values():
            for name in rec["files"]["data"] + rec["files"]["rejected"]:
                assert s3.exists(f"{root}/{name}"), f"committed file {name} is missing after the kill at {point}"
        committed_before = records
    assert len(committed_before) == len(SHARD_NAMES), "the last kill (after publishing) came before the end"
    final = job(cfg, env)
    assert "nothing to embed" in final.stdout
    assert commit_records(s3, root) == committed_before
    valid, rejected = expectations(corpus)
    stats = check_exactly_once(s3, root, valid=valid, rejected=rejected, embedder=job_embedder)
    record(f"driver SIGKILL at {', '.join(f'{p}#{n}' for p, n in points)}", len(points) + 1, stats)


def test_a_run_killed_midway_keeps_the_shards_it_committed_along_the_way(
    s3, sample_rows, config, env, job_embedder, tmp_path
):
    """Twelve small JSON Lines files read by one task (the default grouping), default file size: shards commit
    while the model works through them, not all at the end, so a run killed midway leaves some committed,
    and the rerun keeps those as they are and does the rest."""
    from .conftest import kill_job, start_job

    files = {
        f"part-{f:02d}.jsonl": [
            {
                "id": f"k{f:02d}-{i:03d}",
                "text": f"file {f} row {i}: " + sample_rows[(f * 40 + i) % len(sample_rows)]["text"][:200],
            }
            for i in range(40)
        ]
        for f in range(12)
    }
    upload(s3, "corpus/rel-along-in", files)
    root = "corpus/rel-along"
    cfg = config("rel-along", "s3://corpus/rel-along-in/", output={"target_file_mb": 128.0})
    # Every model batch (32 rows) takes 2 s or more: 15 batches, a shard's 40 rows committed every ~2.5 s.
    run_env = {**env, "EMBEDRANK_FAULTS": json.dumps({"embed_sleep_s": 2.0})}
    proc = start_job(cfg, env=run_env, log=tmp_path / "killed.log")
    deadline, records = time.time() + 300, {}
    while time.time() < deadline and proc.poll() is None and not records:
        records = commit_records(s3, root)
        time.sleep(0.2)
    # 3 s after the first commit at most two more batches went through the model: a run that commits as it
    # goes has committed a few shards by then; one that commits at its end, all or none.
    time.sleep(3)
    kill_job(proc)
    CAPTURED.append((tmp_path / "killed.log").read_text())
    before = commit_records(s3, root)
    assert 1 <= len(before) <= 6, (len(before), (tmp_path / "killed.log").read_text()[-3000:])
    # The killed run's staged files stay until the next run; a `**/*.parquet` glob over the root (DuckDB, polars)
    # still meets only files of vectors/, never a staged or dead-letter file.
    found = [p[len(root) + 1 :] for p in s3.find(root)]
    assert [p for p in found if p.endswith(".parquet") and not p.startswith("vectors/")] == []
    job(cfg, env)
    after = commit_records(s3, root)
    assert {key: after[key] for key in before} == before and len(after) == len(files)
    valid, rejected = expectations(files)
    stats = check_exactly_once(s3, root, valid=valid, rejected=rejected, embedder=job_embedder)
    record(f"driver SIGKILL after {len(before)} of 12 grouped shards committed", 2, stats)


# Slow: tests/integration/test_lock.py is the CI case of two runs on one output (the lock itself, no Ray).
@pytest.mark.slow
def test_two_runs_at_once_on_one_output(s3, corpus, config, env, job_embedder):
    import subprocess

    cfg = config("rel-concurrent")
    procs = [
        subprocess.Popen(
            job_command("embed", cfg),
            cwd=Path(__file__).resolve().parents[2],
            env=job_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    CAPTURED.extend(o + e for o, e in outs)
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [(p.returncode, e[-1500:]) for p, (_, e) in zip(procs, outs)]
    loser = next(e for p, (_, e) in zip(procs, outs) if p.returncode == 2)
    assert "is being written by another run" in loser.strip().splitlines()[-1]
    runs = {rec["run_id"] for rec in commit_records(s3, "corpus/rel-concurrent").values()}
    assert len(runs) == 1, runs
    valid, rejected = expectations(corpus)
    stats = check_exactly_once(s3, "corpus/rel-concurrent", valid=valid, rejected=rejected, embedder=job_embedder)
    record("two runs started at once on one output", 2, stats)


def test_poison_row_is_dead_lettered_after_bounded_crashes(s3, corpus, config, env, job_embedder):
    cfg = config("rel-poison")
    proc = job(cfg, env, faults={"poison_ids": ["d007"]})
    assert "worker_crash 1" in proc.stdout, proc.stdout[-2000:]
    valid, rejected = expectations(corpus)
    del valid["d007"]
    rejected["d007"] = "worker_crash"
    stats = check_exactly_once(s3, "corpus/rel-poison", valid=valid, rejected=rejected, embedder=job_embedder)
    record("a row that kills the model worker every time", 1, stats)


@pytest.mark.slow
def test_nightly_killed_before_the_pointer_moves(s3, sample_rows, config, env, job_embedder):
    night1 = make_files(sample_rows, "n-", names=SHARD_NAMES[:3])
    upload(s3, "corpus/rel-night-in", night1)
    root = "corpus/rel-nightly"
    cfg = config("rel-nightly", input_uri="s3://corpus/rel-night-in/")
    job(cfg, env, command="nightly")
    s3.invalidate_cache()
    first = s3.cat_file(f"{root}/_CURRENT").decode()

    night2 = {**night1, "b.parquet": [{**r, "text": r["text"] + " (revised)"} for r in night1["b.parquet"]]}
    upload(s3, "corpus/rel-night-in", {"b.parquet": night2["b.parquet"]})
    killed = job(cfg, env, command="nightly", expect=None, faults={"driver_kill_at": "nightly_published"})
    assert killed.returncode == -9
    s3.invalidate_cache()
    assert s3.cat_file(f"{root}/_CURRENT").decode() == first
    valid, rejected = expectations(night1)
    check_exactly_once(s3, f"{root}/{first}", valid=valid, rejected=rejected, embedder=job_embedder)

    job(cfg, env, command="nightly")
    s3.invalidate_cache()
    second = s3.cat_file(f"{root}/_CURRENT").decode()
    assert second != first
    valid, rejected = expectations(night2)
    stats = check_exactly_once(s3, f"{root}/{second}", valid=valid, rejected=rejected, embedder=job_embedder)
    record("nightly killed between publishing and moving _CURRENT", 3, stats)


def test_canary_secret_appears_nowhere(s3, ray_tmp):
    """Logs (the runs' output and Ray's session logs), reports, outputs and error messages: no secret."""
    assert CAPTURED, "run the scenarios above first (the module runs in file order)"
    hits = [i for i, text in enumerate(CAPTURED) if CANARY in text]
    assert not hits, f"the secret is in the output of run {hits}"
    planted = ray_tmp / "planted.txt"
    planted.write_text(f"x {CANARY} y")  # the scan below must be able to find it
    found = [p for p in ray_tmp.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert found == [planted], found
    planted.unlink()
    assert len(list(ray_tmp.rglob("*.log"))) > 10, "no Ray session logs were written where expected"
    s3.invalidate_cache()
    objects = [p for p in s3.find("corpus") if p.split("/")[1].startswith("rel-")]
    assert len(objects) > 50
    leaked = [p for p in objects if CANARY.encode() in s3.cat_file(p)]
    assert not leaked, leaked
    assert read_output(s3, "s3://corpus/rel-poison/").num_rows > 0  # the scan read real outputs
