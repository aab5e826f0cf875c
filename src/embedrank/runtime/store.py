"""The output location and its commit protocol.

Layout of OUTPUT: the committed rows in one folder, whose files are the only ones of a finished output named
`*.parquet`; dead letters and bookkeeping in `_` folders:

    OUTPUT/vectors/<shard_key>/part-00000.parquet   committed rows of one input shard (rerank: scores/, retrieve:
                                                    candidates/)
    OUTPUT/_rejected/<shard_key>/part-00000.pq      committed dead letters of that shard (Parquet)
    OUTPUT/_embedrank/commits/<shard_key>.json      the shard's commit record (written last, one PUT)
    OUTPUT/_embedrank/staging/<run_id>/...          files of the running attempt (`*.staged`), never read by users
    OUTPUT/_embedrank/manifest.json                 every committed file of the run, written when the run ends
    OUTPUT/_embedrank/report.json                   run metrics
    OUTPUT/_embedrank/lock.json                     the running run's lock (runtime/lock.py)

So a reader pointed at OUTPUT itself reads the committed rows or fails, never dead letters beside them:
pyarrow, pandas and Ray Data skip `_` folders, and a `**/*.parquet` glob (DuckDB, polars) matches no dead letter
(DuckDB's `**` walks into `_` folders; a schema mismatch would not stop `count(*)`, so a suffix must). polars,
given the folder itself, refuses its mix of file types. Outputs whose dead letters are still at the earlier
`rejected/<shard_key>/part-*.parquet` keep working; the next run of the job moves them (`move_old_rejected`).

Workers only ever write under the staging folder of their run (so a retried task or a killed run has no
visible side effect); the driver commits a shard by clearing the shard's final folders, moving its staged
files in, and then writing its commit record. A shard counts only once its record exists; a rerun redoes every
shard without one, and the clearing step removes what a killed commit left behind.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import time
import uuid

from ..errors import PlanError
from ..io import storage
from ..io.sources import static_prefix
from ..testing import faults

BOOKKEEPING = "_embedrank"
COMMITS = f"{BOOKKEEPING}/commits"
STAGING = f"{BOOKKEEPING}/staging"
MANIFEST = f"{BOOKKEEPING}/manifest.json"
REPORT = f"{BOOKKEEPING}/report.json"
REJECTED = "_rejected"  # dead letters: a `_` folder, which folder readers (pyarrow, pandas, Ray Data) skip
REJECTED_SUFFIX = ".pq"  # Parquet, but not `*.parquet`: a glob over the whole output (DuckDB, polars) never matches
OLD_REJECTED = "rejected"  # where earlier outputs hold their dead letters (`*.parquet`); moved by the next run
VECTORS = "vectors"  # the data folder of embed and nightly outputs; rerank writes scores/
OLD_LAYOUT = ("_commits", "_manifest.json")  # outputs of embedrank 0.1, rows beside their bookkeeping
NIGHTLY_MARKERS = ("_CURRENT", "_NIGHT.json")  # a nightly root (embed/nightly.py)


def _location(uri: str, storage_config) -> str:
    fs, path = storage.filesystem(uri, storage_config)
    return storage.to_uri(fs, path).rstrip("/")


def check_separate(inputs: str | list[str], output_uri: str, storage_config=None, key: str = "input.uri") -> None:
    """Refuse an output inside an input (its files would be read back as input) or an input inside the output."""
    out = _location(output_uri, storage_config)
    for uri in [inputs] if isinstance(inputs, str) else list(inputs):
        if not uri:
            continue
        base = _location(static_prefix(uri), storage_config)
        if out == base or out.startswith(base + "/"):
            raise PlanError(
                f"output.uri {output_uri} lies inside {key} {uri}: a rerun would read the output as "
                "input. Write the output somewhere else"
            )
        if base.startswith(out + "/"):
            raise PlanError(
                f"{key} {uri} lies inside output.uri {output_uri}: the job rewrites that folder. "
                "Move the input or write the output somewhere else"
            )


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


class OutputStore:
    def __init__(self, uri: str, storage_config=None, guard=None, data_folder: str = VECTORS):
        """`guard` (the run's runtime.lock.RunLock) is checked before every change that readers can see;
        `data_folder` names the folder of committed rows (vectors, scores, candidates)."""
        self.uri = uri.rstrip("/")
        self.data_folder = data_folder
        self.storage_config = storage_config
        self.fs, self.root = storage.filesystem(self.uri, storage_config)
        self.guard = guard

    def check_guard(self) -> None:
        if self.guard is not None:
            self.guard.ensure()

    # -- paths -------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def staging_dir(self, run_id: str) -> str:
        return self.path(STAGING, run_id)

    def final_dir(self, shard_key: str, kind: str) -> str:
        return self.path(self.data_folder if kind == "data" else REJECTED, shard_key)

    def final_name(self, shard_key: str, kind: str, index: int) -> str:
        """Where the `index`-th committed file of a shard's data or dead letters goes."""
        suffix = ".parquet" if kind == "data" else REJECTED_SUFFIX
        return posixpath.join(self.final_dir(shard_key, kind), f"part-{index:05d}{suffix}")

    def uri_of(self, path: str) -> str:
        return storage.to_uri(self.fs, path)

    def layout(self) -> str:
        """What the location holds: 'nightly' (a root of versions), 'job' (one job's output) or 'empty'."""
        try:
            if any(self.fs.exists(self.path(name)) for name in NIGHTLY_MARKERS):
                return "nightly"
            if self.fs.exists(self.path(COMMITS)) or self.fs.exists(self.path(MANIFEST)):
                return "job"
            if any(self.fs.exists(self.path(name)) for name in OLD_LAYOUT):
                raise PlanError(
                    f"{self.uri} holds an output of embedrank 0.1 (rows beside _commits/ and _manifest.json), "
                    f"which this version neither reads nor extends: write to a new output.uri (or move the old "
                    f"one away) and rerun; its shard folders hold the same Parquet as {self.data_folder}/ now"
                )
        except PlanError:
            raise
        except Exception as exc:
            raise storage.explain(exc, self.uri) from None
        return "empty"

    def refuse_layout(self, unwanted: str, job: str, fix: str) -> None:
        if self.layout() == unwanted:
            what = "a nightly root (versions behind _CURRENT)" if unwanted == "nightly" else "one job's output"
            raise PlanError(f"{self.uri} is {what}; `embedrank {job}` cannot write there. {fix}")

    # -- small JSON objects ------------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """One object written atomically: a single PUT on S3, write-then-rename locally."""
        if storage.is_remote(self.uri):
            self.fs.pipe_file(path, data)
            return
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, path)

    def write_json(self, path: str, obj) -> None:
        self.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode())

    def read_text(self, path: str) -> str | None:
        try:
            return self.fs.cat_file(path).decode().strip()
        except FileNotFoundError:
            return None

    def copy_shard_from(self, other: OutputStore, record: dict) -> dict:
        """Copy a committed shard (files, then record) from another store; returns the new record."""
        self.check_guard()
        files = {}
        for kind, names in record["files"].items():
            for name in names:
                dst = self.path(name)
                self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
                if self.fs is other.fs:
                    self.fs.copy(other.path(name), dst)
                else:  # pragma: no cover - stores on different filesystems
                    self.fs.pipe_file(dst, other.fs.cat_file(other.path(name)))
            files[kind] = list(names)
        copied = {
            **record,
            "files": files,
            "carried_from": other.uri,
            "model_rows": 0,
            "changes": {"carried": record["rows"]["embedded"]},
        }
        self.write_json(self.path(COMMITS, f"{record['shard']['key']}.json"), copied)
        return copied

    def read_json(self, path: str):
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None

    # -- commit records ----------------------------------------------------------------------------------
    def read_commits(self) -> dict[str, dict]:
        folder = self.path(COMMITS)
        try:
            names = self.fs.ls(folder, detail=False) if self.fs.exists(folder) else []
        except FileNotFoundError:
            names = []
        except Exception as exc:
            raise storage.explain(exc, self.uri) from None
        records = {}
        for name in names:
            if name.endswith(".json"):
                record = self.read_json(name)
                if record:
                    records[record["shard"]["key"]] = record
        return records

    def commit_shard(self, shard_key: str, staged: dict[str, list[str]], record: dict) -> dict:
        """Move a shard's staged files into place, then write its commit record. Returns the record."""
        self.check_guard()
        files = {}
        self._remove_old_rejected(shard_key)
        for kind in ("data", "rejected"):
            final = self.final_dir(shard_key, kind)
            if self.fs.exists(final):
                self.remove_tree(final)
            moved = []
            for i, src in enumerate(staged.get(kind, [])):
                dst = self.final_name(shard_key, kind, i)
                self.fs.makedirs(final, exist_ok=True)
                self.fs.mv(src, dst)
                faults.driver_point("moving")
                moved.append(posixpath.relpath(dst, self.root))
            files[kind] = moved
        record = {**record, "files": files, "committed_at": time.time()}
        self.write_json(self.path(COMMITS, f"{shard_key}.json"), record)
        return record

    def remove_shard(self, shard_key: str) -> None:
        """Forget a shard: record first, so a crash in between never leaves a record without its files."""
        self.check_guard()
        record = self.path(COMMITS, f"{shard_key}.json")
        if self.fs.exists(record):
            self.fs.rm_file(record)
        for kind in ("data", "rejected"):
            if self.fs.exists(self.final_dir(shard_key, kind)):
                self.remove_tree(self.final_dir(shard_key, kind))
        self._remove_old_rejected(shard_key)

    def _remove_old_rejected(self, shard_key: str) -> None:
        old = self.path(OLD_REJECTED, shard_key)
        if self.fs.exists(old):
            self.remove_tree(old)

    def move_old_rejected(self, records: dict[str, dict]) -> dict[str, dict]:
        """Move dead letters from the earlier `rejected/<shard>/part-*.parquet` to `_rejected/` (records updated
        in `records` and on storage); the old folder goes once no record names it. Safe to stop anywhere: a
        shard's files are copied, then its record rewritten, then the old files deleted, so a rerun finishes."""
        old_prefix = OLD_REJECTED + "/"
        for key, record in sorted(records.items()):
            names = record.get("files", {}).get("rejected", [])
            if not any(name.startswith(old_prefix) for name in names):
                continue
            self.check_guard()
            moved = []
            for i, name in enumerate(names):
                dst = self.final_name(key, "rejected", i)
                if self.path(name) != dst:
                    self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
                    self.fs.copy(self.path(name), dst)
                moved.append(posixpath.relpath(dst, self.root))
            records[key] = {**record, "files": {**record["files"], "rejected": moved}}
            self.write_json(self.path(COMMITS, f"{key}.json"), records[key])
        folder = self.path(OLD_REJECTED)
        if self.fs.exists(folder):
            self.check_guard()
            named = {n for r in self.read_commits().values() for n in r.get("files", {}).get("rejected", [])}
            if not any(n.startswith(old_prefix) for n in named):
                self.remove_tree(folder)
        return records

    def clear_staging(self) -> None:
        if self.fs.exists(self.path(STAGING)):
            self.remove_tree(self.path(STAGING))

    def remove_tree(self, path: str) -> None:
        """Delete a folder and everything below it. Locally with shutil: fsspec's local rm compares the path
        with os.getcwd(), which fails once a driver's working directory is gone (under `ray job submit` the
        driver runs inside the job's working_dir package, which Ray may delete before the driver ends)."""
        if storage.is_remote(self.uri):
            self.fs.rm(path, recursive=True)
        else:
            shutil.rmtree(path)


def committed_files(uri: str, storage_config=None, kind: str = "data") -> list[str]:
    """URIs of the committed files of one job's output, or of a nightly root's current version: read from the
    commit records, so a run in progress or a killed one adds nothing. kind: "data" or "rejected"."""
    store = OutputStore(uri, storage_config)
    if store.layout() == "nightly":
        version = store.read_text(store.path(NIGHTLY_MARKERS[0]))
        if not version:
            raise PlanError(f"{uri} is a nightly root with no published version yet: run `embedrank nightly` first")
        store = OutputStore(store.uri_of(store.path(version)), storage_config)
    elif store.layout() == "empty":
        raise PlanError(
            f"{uri} holds no embedrank output (no commit records): check the path, or run the job that writes it first"
        )
    records = store.read_commits()
    return [store.uri_of(store.path(name)) for key in sorted(records) for name in records[key]["files"].get(kind, [])]
