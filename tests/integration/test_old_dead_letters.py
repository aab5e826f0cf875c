"""An output whose dead letters are at the earlier `rejected/<shard>/part-*.parquet`, on the local S3 endpoint and
on a local path (no Ray): embedrank still reads it, and the next run's publish moves them to `_rejected/*.pq`,
after which a reader of the root meets only the vectors."""

import io
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.config import StorageConfig
from embedrank.report import RunReport
from embedrank.runtime.commits import publish
from embedrank.runtime.store import OutputStore, committed_files


@pytest.fixture(params=["s3", "local"])
def store(request, s3, s3_endpoint, tmp_path):
    if request.param == "s3":
        return OutputStore(f"s3://corpus/old-dead-{time.time_ns()}", StorageConfig(endpoint_url=s3_endpoint))
    return OutputStore(str(tmp_path / "out"))


def put(store: OutputStore, name: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.fs.makedirs(store.path(name).rsplit("/", 1)[0], exist_ok=True)
    store.fs.pipe_file(store.path(name), buf.getvalue())


def test_old_dead_letters_are_read_then_moved_out_of_the_root(store):
    records = {}
    for key, dead in (("a", 2), ("b", 0)):
        put(store, f"vectors/{key}/part-00000.parquet", pa.table({"id": [f"{key}1"], "embedding": [[1.0, 0.0]]}))
        names = [f"rejected/{key}/part-{i:05d}.parquet" for i in range(dead)]
        for i, name in enumerate(names):
            put(store, name, pa.table({"id": [f"{key}-bad{i}"], "source": ["in"], "row": [i], "reason": ["bad_id"]}))
        records[key] = {
            "shard": {"key": key},
            "files": {"data": [f"vectors/{key}/part-00000.parquet"], "rejected": names},
            "rows": {"read": 1 + dead, "embedded": 1, "rejected": dead},
        }
        store.write_json(store.path("_embedrank/commits", f"{key}.json"), records[key])
    store.write_json(store.path("_embedrank/manifest.json"), {})
    assert len(committed_files(store.uri, store.storage_config, kind="rejected")) == 2

    publish(store, records, {"model": "m"}, RunReport(output=store.uri, model="m"))
    store.fs.invalidate_cache()
    moved = ["_rejected/a/part-00000.pq", "_rejected/a/part-00001.pq"]
    assert store.read_commits()["a"]["files"]["rejected"] == moved
    assert json.loads(store.fs.cat_file(store.path("_embedrank/manifest.json")))["rejected_files"] == moved
    assert not store.fs.exists(store.path("rejected"))
    found = sorted(p[len(store.root) + 1 :] for p in store.fs.find(store.root))
    assert [p for p in found if p.endswith(".parquet")] == [
        "vectors/a/part-00000.parquet",
        "vectors/b/part-00000.parquet",
    ]
    dead = [pq.read_table(io.BytesIO(store.fs.cat_file(store.path(name)))) for name in moved]
    assert sorted(pa.concat_tables(dead).column("id").to_pylist()) == ["a-bad0", "a-bad1"]
