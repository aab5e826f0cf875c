"""Shard-level commits: which shards an output already holds, when a running shard is complete, publishing.

A shard is committed once the writer's FILE_META rows cover its `_seq` numbers [0, total) exactly once; the
driver then moves its staged files into place and writes its commit record (runtime/store.py). At the end of
a run the manifest lists every committed file: readers of the manifest never see a half-written run.
"""

from __future__ import annotations

import hashlib
import json
import time

from .. import __version__
from ..errors import PlanError
from ..io.pieces import SEQ_STRIDE, piece_of_seq
from ..report import RunReport
from ..testing import faults
from .staging import shift_rows
from .store import MANIFEST, REPORT, OutputStore


def fingerprint_id(fp: dict) -> str:
    """A short name for a fingerprint (everything that changes an output row): equal ids, interchangeable rows."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def records_digest(records: dict[str, dict]) -> str:
    """Names one state of the committed shards (every commit has its own time)."""
    state = sorted((key, record.get("committed_at")) for key, record in records.items())
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


def split_by_commits(store: OutputStore, shards: list, fp: dict, what: str):
    """(committed records to keep, pending shards, stale records) for an output and this run's shards.

    Refuses an output written with another fingerprint; a shard whose input file changed is pending again,
    and a committed shard whose input file is gone is stale (key -> record).
    """
    records = store.read_commits()
    fp_id = fingerprint_id(fp)
    for record in records.values():
        if record.get("fingerprint_id") != fp_id:
            theirs = record.get("fingerprint", {})
            diff = {k: (theirs.get(k), v) for k, v in fp.items() if theirs.get(k) != v}
            raise PlanError(
                f"{store.uri} already holds {what} made with other settings ({diff}: (there, now)); "
                "write to a new output location, or delete the old one first"
            )
    current = {s.key: s for s in shards}
    committed = {k: r for k, r in records.items() if k in current and r["shard"]["version"] == current[k].version}
    stale = {k: r for k, r in records.items() if k not in current}
    if len(committed) < len(current):
        # A shard that gave up rows to an earlier shard's copy of their ids is redone with the rest: that copy
        # may be gone now.
        committed = {k: r for k, r in committed.items() if not r.get("cross_shard_duplicates")}
    pending = [s for s in shards if s.key not in committed]
    return committed, pending, stale


class CommitTracker:
    """Driver-side bookkeeping: a shard commits once every piece's end marker arrived and each piece's `_seq`
    ranges cover [base, base + total) exactly once (io/pieces.py: piece i numbers from i * SEQ_STRIDE)."""

    def __init__(
        self,
        store: OutputStore,
        pending: list,
        report: RunReport,
        base_record: dict,
        finalize=None,
        pieces: dict[str, int] | None = None,
        rows_from_zero: set[str] = frozenset(),
    ):
        """`pieces`: shard key -> how many pieces the file was cut into (default 1). `rows_from_zero`: shards
        whose pieces number their rows from 0 (JSON Lines byte ranges): their dead letters' row numbers are
        shifted to the file's numbering before the commit.
        `finalize(shard_key, staged, record) -> (staged, extra record fields)` may rewrite a complete shard's
        staged files before they are committed (the rerank job ranks and cuts to top_k there, and says so in
        `rows_written`)."""
        self.finalize = finalize
        self.rows_from_zero = rows_from_zero
        self.store = store
        self.shards = {s.key: s for s in pending}
        self.pieces = {s.key: (pieces or {}).get(s.key, 1) for s in pending}
        self.files: dict[str, dict[str, dict]] = {s.key: {} for s in pending}  # key -> path -> meta
        self.ends: dict[str, dict[int, dict]] = {s.key: {} for s in pending}  # key -> piece -> end marker
        self.report = report
        self.base_record = base_record
        self.records: dict[str, dict] = {}
        self.bad: dict[str, str] = {}  # shard key -> why its file could not be read (input.on_bad_shard: skip)

    def add(self, meta: dict) -> None:
        """One decoded FILE_META row (schema.decode_file_meta)."""
        key = meta["shard"]
        if key in self.records:
            raise RuntimeError(f"shard {key} received rows after its commit; refusing to duplicate them")
        if key in self.bad:
            return  # a file that broke off is never committed: what else arrives of it stays in staging
        if meta["kind"] == "bad":
            # Its pieces' rows staged so far are dropped with the staging folder; the report names the file.
            self.bad[key] = meta["reasons"].get("error", "")
            self.files.pop(key, None)
            self.report.add_bad_shard(self.shards[key].uri, self.bad[key])
            return
        if meta["kind"] == "end":
            self.ends[key][meta["piece"]] = meta
        else:
            self.files[key][meta["path"]] = meta  # a path seen twice is the same file, rewritten
            faults.driver_point("staged")
        self._maybe_commit(key)

    def _complete(self, key: str) -> bool:
        """Every piece ended and its rows are covered exactly once (an overlap is a bug: refuse to commit)."""
        ends = self.ends[key]
        if len(ends) < self.pieces[key]:
            return False
        covered: dict[int, int] = {}
        last_end = 0
        for start, end in sorted(r for m in self.files[key].values() for r in m["ranges"]):
            if start < last_end:
                raise RuntimeError(f"shard {key}: rows {start}..{last_end} were written twice; not committing")
            piece = piece_of_seq(start)
            if piece not in ends or end > piece * SEQ_STRIDE + ends[piece]["shard_total"]:
                return False
            covered[piece] = covered.get(piece, 0) + end - start
            last_end = end
        return all(covered.get(piece, 0) == end["shard_total"] for piece, end in ends.items())

    def _maybe_commit(self, key: str) -> None:
        if not self._complete(key):
            return
        ends = list(self.ends[key].values())
        metas = sorted(self.files[key].values(), key=lambda m: m["ranges"][0][0])
        if key in self.rows_from_zero:
            self._shift_rejected_rows(key, metas)
        staged = {kind: [m["path"] for m in metas if m["kind"] == kind] for kind in ("data", "rejected")}
        rows = {
            "read": sum(end["rows"] for end in ends),
            "embedded": sum(m["rows"] for m in metas if m["kind"] == "data"),
            "rejected": sum(m["rows"] for m in metas if m["kind"] == "rejected"),
        }
        changes: dict[str, int] = {}
        for meta in metas:
            for change, count in meta["changes"].items():
                changes[change] = changes.get(change, 0) + count
        record = {
            **self.base_record,
            "shard": self.shards[key].to_dict(),
            "rows": rows,
            "changes": changes,
            "model_rows": sum(m["model_rows"] for m in metas),
            "rows_written": rows["embedded"],  # rows in the committed data files (finalize may cut)
            # the piece of each data file: ids are unique within a piece (embed/dedupe.py)
            "data_pieces": [m["piece"] for m in metas if m["kind"] == "data"],
        }
        if self.finalize is not None:
            staged, extra = self.finalize(key, staged, record)
            record.update(extra)
        self.records[key] = self.store.commit_shard(key, staged, record)
        faults.driver_point("committed")
        for meta in [*metas, *ends]:
            self.report.add_file(meta)
        self.report.shards_committed += 1
        del self.files[key]

    def _shift_rejected_rows(self, key: str, metas: list[dict]) -> None:
        """Dead letters of piece i get the rows of pieces 0..i-1 added: row numbers of the whole file."""
        ends = self.ends[key]
        offsets, total = {}, 0
        for piece in sorted(ends):
            offsets[piece], total = total, total + ends[piece]["rows"]
        for meta in metas:
            if meta["kind"] == "rejected" and offsets.get(meta["piece"]):
                shift_rows(self.store.fs, meta["path"], offsets[meta["piece"]])

    def missing(self) -> list[str]:
        """Shards neither committed nor skipped as bad: the run did not finish them."""
        return [k for k in self.shards if k not in self.records and k not in self.bad]


def publish(
    store: OutputStore,
    records: dict[str, dict],
    fp: dict,
    report: RunReport,
    manifest_extra: dict | None = None,
    write_report: bool = True,
) -> None:
    """Write the manifest (every committed file) and the report (unless told not to), then drop staging. Dead
    letters an earlier version left at `rejected/` are moved to `_rejected/` first (`records` updated)."""
    store.check_guard()
    store.move_old_rejected(records)
    files = sorted(f for r in records.values() for f in r["files"].get("data", []))
    rejected = sorted(f for r in records.values() for f in r["files"].get("rejected", []))
    store.write_json(
        store.path(MANIFEST),
        {
            "version": __version__,
            "fingerprint": fp,
            "fingerprint_id": fingerprint_id(fp),
            "files": files,
            "rejected_files": rejected,
            "shards": sorted(records),
            "rows": sum(r.get("rows_written", r["rows"]["embedded"]) for r in records.values()),
            "rejected_rows": sum(r["rows"]["rejected"] for r in records.values()),
            "published_at": time.time(),
            **(manifest_extra or {}),
        },
    )
    faults.driver_point("published")
    if write_report:
        store.write_json(store.path(REPORT), report.to_dict())
    store.clear_staging()
