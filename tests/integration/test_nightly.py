"""Nightly: only changed and new documents reach the model, versions publish behind _CURRENT, kills are safe."""

import json
import random
import time

import numpy as np
import pyarrow as pa
import pytest

from embedrank import Qwen3Embedder
from embedrank.verify import row_cosines

from .conftest import kill_job, read_output, run_job, start_job

SHARDS, PER_SHARD = 4, 100


def night_corpus(sample_rows, night: int) -> dict[str, list[dict]]:
    """Night 1: 400 documents in 4 files. Night 2: 3% changed, 2% added, 1% deleted, spread over every file."""
    files = {
        f"part-{s}.jsonl": [
            {
                "id": f"n{s}-{i:03d}",
                "text": sample_rows[(s * PER_SHARD + i) % len(sample_rows)]["text"][:300] + f" #{s}-{i}",
            }
            for i in range(PER_SHARD)
        ]
        for s in range(SHARDS)
    }
    if night >= 2:
        rng = random.Random(5)
        for s, rows in enumerate(files.values()):
            for i in rng.sample(range(PER_SHARD), 3):  # 12 changed
                rows[i] = {**rows[i], "text": rows[i]["text"] + " (revised)"}
            rows.extend({"id": f"new{s}-{j}", "text": f"a new document {s}-{j} about nightly runs"} for j in range(2))
            del rows[rng.randrange(PER_SHARD - 10, PER_SHARD)]  # 4 deleted, never one of the changed
    return files


def write_corpus(s3, prefix: str, files: dict) -> None:
    for name, rows in files.items():
        s3.pipe_file(f"{prefix}/{name}", "".join(json.dumps(r) + "\n" for r in rows).encode())


def current(s3, root: str) -> str:
    s3.invalidate_cache()
    return s3.cat_file(f"{root}/_CURRENT").decode()


def report(s3, root: str) -> dict:
    s3.invalidate_cache()
    return json.loads(s3.cat_file(f"{root}/_embedrank/report.json"))


def nightly(config, *args, **kwargs):
    proc = run_job(config, *args, command="nightly", **kwargs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def embedder(tiny_embedding_dir):
    return Qwen3Embedder.from_pretrained(tiny_embedding_dir, max_length=512)


def kill_night_two(s3, root: str, night1: str, first, config, tmp_path) -> None:
    """Start night 2 slowed down, SIGKILL it once part of its version is staged: night 1 stays current, intact."""
    slow = {"EMBEDRANK_FAULTS": json.dumps({"embed_sleep_s": 0.3})}
    proc = start_job(
        config,
        "--set",
        "embed.rows_per_batch=16",
        "--set",
        "output.target_file_mb=0.001",
        command="nightly",
        env=slow,
        log=tmp_path / "killed.log",
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        s3.invalidate_cache()
        versions = [p for p in s3.ls(root) if p.rsplit("/", 1)[-1].startswith("v=") and not p.endswith(night1)]
        if versions and s3.exists(f"{versions[0]}/_embedrank/staging") and s3.find(f"{versions[0]}/_embedrank/staging"):
            break  # the night has written part of its output
        time.sleep(0.1)
    kill_job(proc)
    s3.invalidate_cache()
    assert s3.exists(f"{root}/_NIGHT.json"), (
        "the kill came after the night ended: " + (tmp_path / "killed.log").read_text()[-2000:]
    )
    assert current(s3, root) == night1
    again = read_output(s3, f"s3://{root}/{night1}/")
    assert sorted(again.column("id").to_pylist()) == sorted(first.column("id").to_pylist())


# CI runs the nights uninterrupted; the night killed midway and resumed runs in slow (test_reliability's run
# killed midway is the CI case of a killed run).
@pytest.mark.parametrize("killed", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["whole", "killed"])
def test_nightly_incremental_kill_and_resume_on_s3(s3, sample_rows, job_config_module, embedder, tmp_path, killed):
    variant = "killed" if killed else "whole"
    root, source = f"corpus/nightly-out-{variant}", f"corpus/nightly-in-{variant}"
    config = job_config_module(f"s3://{source}/", f"s3://{root}/")
    write_corpus(s3, source, night_corpus(sample_rows, 1))
    nightly(config)
    night1 = current(s3, root)
    first = read_output(s3, f"s3://{root}/{night1}/")
    assert first.num_rows == SHARDS * PER_SHARD
    assert report(s3, root)["nightly"]["new"] == SHARDS * PER_SHARD

    # Night 2 (killed while its version is being written, then rerun: night 1 stays current meanwhile).
    files = night_corpus(sample_rows, 2)
    write_corpus(s3, source, files)
    if killed:
        kill_night_two(s3, root, night1, first, config, tmp_path)

    # The rerun completes night 2: only changed + new documents go through the model.
    nightly(config)
    night2 = current(s3, root)
    assert night2 != night1
    stats = report(s3, root)
    changed, new, deleted = 12, 8, 4
    assert (stats["nightly"]["changed"], stats["nightly"]["new"], stats["nightly"]["deleted"]) == (
        changed,
        new,
        deleted,
    )
    assert stats["nightly"]["carried"] == SHARDS * PER_SHARD - changed - deleted
    # Resumed: what the killed attempt committed is kept; the model saw at most the changed + new rows.
    assert stats["rows_through_model"] <= changed + new
    out = read_output(s3, f"s3://{root}/{night2}/")
    expected = {r["id"]: r["text"] for rows in files.values() for r in rows}
    ids = out.column("id").to_pylist()
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    want = embedder.embed([expected[i] for i in ids])
    assert row_cosines(np.asarray(out.column("embedding").to_pylist(), np.float32), want).min() >= 0.99999

    # Night 3, nothing changed: nothing embedded, the pointer stays.
    nightly(config)
    assert current(s3, root) == night2
    assert report(s3, root)["rows_through_model"] == 0


@pytest.mark.parametrize(
    "change",
    [
        ["--set", "model.dim=64"],
        pytest.param(
            ["--set", "input.kind=query", "--set", "input.instruction=Find the passage"], marks=pytest.mark.slow
        ),
    ],
)
def test_fingerprint_change_re_embeds_everything_on_local_paths(tmp_path, job_config, change):
    (tmp_path / "in").mkdir()
    rows = [{"id": f"d{i}", "text": f"document {i} for the nightly fingerprint test"} for i in range(40)]
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = job_config(str(tmp_path / "in"), str(tmp_path / "out"))
    nightly(config)
    nightly(config)
    assert json.loads((tmp_path / "out" / "_embedrank" / "report.json").read_text())["rows_through_model"] == 0
    nightly(config, *change)
    stats = json.loads((tmp_path / "out" / "_embedrank" / "report.json").read_text())
    assert stats["rows_through_model"] == len(rows) and stats["nightly"]["carried"] == 0
    version = (tmp_path / "out" / "_CURRENT").read_text()
    out = read_output(None, str(tmp_path / "out" / version))
    assert out.num_rows == len(rows)
    if "model.dim=64" in change:
        assert str(out.schema.field("embedding").type).endswith("[64]")


def by_document_nights(tmp_path, job_config, embedder):
    """(docs, write(prefix, layout, names), night(input) -> counts, config) for the by-document scenarios."""
    # Integer ids: int64 in every version, matched with the previous version's int64 ids.
    docs = {i: f"document {i} of the by-document nightly test, with some words" for i in range(60)}

    def write(prefix: str, layout: list[list[str]], names: list[str]) -> str:
        folder = tmp_path / "in" / prefix
        folder.mkdir(parents=True)
        for name, ids in zip(names, layout):
            (folder / name).write_text("".join(json.dumps({"id": i, "text": docs[i]}) + "\n" for i in ids))
        return str(folder)

    def night(input_uri: str) -> dict:
        nightly(config, "--input", input_uri)
        stats = json.loads((tmp_path / "out" / "_embedrank" / "report.json").read_text())
        version = (tmp_path / "out" / "_CURRENT").read_text()
        out = read_output(None, str(tmp_path / "out" / version))
        assert out.schema.field("id").type == pa.int64()
        ids = out.column("id").to_pylist()
        assert sorted(ids) == sorted(docs) and len(set(ids)) == len(ids)
        want = embedder.embed([docs[i] for i in ids])
        assert row_cosines(np.asarray(out.column("embedding").to_pylist(), np.float32), want).min() >= 0.99999
        return stats["nightly"] | {"model": stats["rows_through_model"]}

    ids = sorted(docs)
    thirds = [ids[0:20], ids[20:40], ids[40:60]]
    config = job_config(write("dt=1", thirds, ["a.jsonl", "b.jsonl", "c.jsonl"]), str(tmp_path / "out"))
    assert night(str(tmp_path / "in" / "dt=1"))["new"] == 60
    return docs, write, night


def test_nightly_by_document_new_prefix_renamed_and_moved_at_once(tmp_path, job_config, embedder):
    """One night with a new dated prefix, new file names and documents moved between files: 1 changed, 1 new
    and 1 deleted document, and only those two reach the model."""
    docs, write, night = by_document_nights(tmp_path, job_config, embedder)
    docs[7] += " (revised)"
    docs[1000] = "a document that did not exist yesterday"
    del docs[50]
    ids = sorted(docs)
    stats = night(write("dt=2", [ids[::2], ids[1::2]], ["part-00000-u1.jsonl", "part-00001-u1.jsonl"]))
    assert (stats["changed"], stats["new"], stats["deleted"], stats["model"]) == (1, 1, 1, 2)
    assert stats["carried"] == 58


@pytest.mark.slow
def test_nightly_compares_documents_not_files(tmp_path, job_config, embedder):
    """A new dated prefix, renamed files and documents moving between files, night after night: each embeds
    exactly the new + changed documents."""
    docs, write, night = by_document_nights(tmp_path, job_config, embedder)

    # A new dated prefix with the same file names: 3 changed, 2 new, 1 deleted.
    for i in (1, 25, 59):
        docs[i] += " (revised)"
    docs.update({1001: "a new document", 1002: "another new document"})
    del docs[30]
    ids = sorted(docs)
    stats = night(write("dt=2", [ids[0:21], ids[21:41], ids[41:]], ["a.jsonl", "b.jsonl", "c.jsonl"]))
    assert (stats["changed"], stats["new"], stats["deleted"], stats["model"]) == (3, 2, 1, 5)
    assert stats["carried"] == 56

    # Spark-style renamed files with the same documents: nothing reaches the model.
    stats = night(write("dt=3", [ids[0:21], ids[21:41], ids[41:]], [f"part-{u}.jsonl" for u in ("x1", "y2", "z3")]))
    assert (stats["changed"], stats["new"], stats["deleted"], stats["model"]) == (0, 0, 0, 0)

    # Documents moved between files (another split, one file more).
    stats = night(
        write("dt=4", [ids[::4], ids[1::4], ids[2::4], ids[3::4]], ["p.jsonl", "q.jsonl", "r.jsonl", "s.jsonl"])
    )
    assert (stats["changed"], stats["new"], stats["deleted"], stats["model"]) == (0, 0, 0, 0)
    assert stats["carried"] == len(docs)
