"""Nightly incremental re-embedding into versioned outputs behind a pointer.

    OUTPUT/_CURRENT          the current version's folder name, e.g. "v=20261127T020000" (moved last)
    OUTPUT/v=<timestamp>/    one complete embed-job output per published night
    OUTPUT/_NIGHT.json       the night in progress: {version, base, fingerprint_id}; lets a rerun resume it
    OUTPUT/_embedrank/report.json  the latest night's report (also inside its version)

An input file whose key and version (ETag/mtime) match the current version's commit record, under the same
model fingerprint, is copied forward whole (no read, no model). Every other document is compared by (id,
content hash) with the rest of the current version, across files (embed/carry.py: hash-partitioned in Ray
tasks, never on the driver): a document whose id and content hash are unchanged is carried with its vector,
wherever it was before. Only new and changed documents reach the model, so a new dated prefix, renamed files
or documents moving between files cost nothing but the comparison.
"""

from __future__ import annotations

import dataclasses
import posixpath
import time

from ..errors import ConfigError
from ..ids import committed_schema
from ..io.pieces import Piece
from ..report import RunReport
from ..runtime.job import JobPlan
from ..runtime.store import REPORT, OutputStore
from .carry import match_previous
from .job import EmbedJob, check_embed_config

CURRENT = "_CURRENT"
NIGHT = "_NIGHT.json"
VERSION_PREFIX = "v="


def current_version_uri(output_uri: str, storage_config=None) -> str | None:
    """The URI of the version readers should use (None before the first night)."""
    root = OutputStore(output_uri, storage_config)
    name = root.read_text(root.path(CURRENT))
    return f"{root.uri}/{name}" if name else None


def _new_version_name(root: OutputStore) -> str:
    name = VERSION_PREFIX + time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    while root.fs.exists(root.path(name)):
        time.sleep(1)
        name = VERSION_PREFIX + time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return name


def _versions(root: OutputStore) -> list[str]:
    if not root.fs.exists(root.root):
        return []
    names = [posixpath.basename(p.rstrip("/")) for p in root.fs.ls(root.root, detail=False)]
    return sorted(n for n in names if n.startswith(VERSION_PREFIX))


@dataclasses.dataclass
class NightPlan(JobPlan):
    root: OutputStore | None = None
    version: str = ""  # tonight's version folder
    current: str | None = None  # the version readers use now
    previous: dict = dataclasses.field(default_factory=dict)  # the current version's commit records
    current_store: OutputStore | None = None
    unchanged: set = dataclasses.field(default_factory=set)  # shard keys copied whole from the current version
    key_pieces: list = dataclasses.field(default_factory=list)  # pieces whose ids are compared (pending first)
    pool_files: list = dataclasses.field(default_factory=list)  # current version's files to carry documents from
    night: dict | None = None  # the unfinished night found in _NIGHT.json (None: none, or it was finished)
    stale_night: bool = False  # _NIGHT.json names the current version: the pointer moved, the cleanup did not
    carry: object = None  # embed.carry.CarryPlan of tonight's documents, matched in `start`


class NightlyJob(EmbedJob):
    """Publish tonight's version (or resume a killed night, or find nothing changed)."""

    NAME = "nightly"
    MIRROR = True  # a version holds exactly tonight's input

    REFUSES = (
        "job",
        "Its root holds versions (v=<time>/) and _CURRENT: choose an empty output.uri for the nightly root",
    )

    def plan(self, root: OutputStore, report: RunReport) -> NightPlan | None:
        """Decide tonight's version from the root, the current version and the input; writes nothing (`start`
        does what this decided)."""
        cfg, log = self.cfg, self.log
        check_embed_config(cfg)
        compact = cfg.output.embedding_dtype in ("int8", "binary")
        if compact and set(cfg.output.extra_embedding_dtypes) - {cfg.output.embedding_dtype}:
            raise ConfigError(
                f"output.extra_embedding_dtypes beside a {cfg.output.embedding_dtype} embedding cannot be carried "
                "by nightly (carried documents keep their codes, not the float vector): make the float dtype the "
                "embedding and the compact one the extra, or drop the extra"
            )
        if cfg.input.on_bad_shard != "stop":
            raise ConfigError(
                "input.on_bad_shard: skip does not apply to nightly: a published version holds "
                "every input file, and one without a file's documents would drop them for readers "
                "(the current version stays until a night succeeds); set input.on_bad_shard: stop"
            )
        shards = self.plan_start(root)
        current = root.read_text(root.path(CURRENT))
        current_store = OutputStore(f"{root.uri}/{current}", cfg.storage) if current else None
        previous = current_store.read_commits() if current_store else {}
        same_model = bool(previous) and all(r.get("fingerprint_id") == self.fp_id for r in previous.values())
        if previous and not same_model:
            log("nightly: the model fingerprint changed since the current version: every document is embedded again")
            previous = {}
        same_file = {s.key for s in shards if s.key in previous and previous[s.key]["shard"]["version"] == s.version}
        # A shard that gave up rows to another shard's copy of their ids is prepared again when anything
        # changed, never copied whole: that copy may be gone.
        unchanged = {k for k in same_file if not previous[k].get("cross_shard_duplicates")}
        gone = [k for k in previous if k not in {s.key for s in shards}]

        night = root.read_json(root.path(NIGHT))
        stale_night = bool(night) and night.get("version") == current
        if stale_night:
            night = None
        if current and not night and len(same_file) == len(shards) and not gone:
            log(f"nightly: nothing changed since {current}; it stays current")
            report.shards_total = len(shards)
            report.changes["carried"] = sum(r["rows"]["embedded"] for r in previous.values())
            report.nightly = {"version": current, "previous_version": current, "outcome": "nothing changed"}
            if not self.dry_run:
                if stale_night:
                    root.fs.rm_file(root.path(NIGHT))
                root.write_json(root.path(REPORT), report.finish().to_dict())
            return None

        resumed = bool(night) and night.get("base") == current and night.get("fingerprint_id") == self.fp_id
        if resumed:
            version = night["version"]
            log(f"nightly: resuming {version} (on top of {current})")
        else:
            version = _new_version_name(root)
        version_store = OutputStore(f"{root.uri}/{version}", cfg.storage, guard=root.guard)
        # Whole files that did not change are copied forward without being read (in `start`); until then
        # they count as committed in tonight's version.
        already = version_store.read_commits()
        copied = {key: previous[key] for key in unchanged if key not in already}
        plan = self.plan_shards(version_store, [s for s in shards if s.key not in copied])
        # Tonight's files have the current version's ids and columns (its files are copied or carried forward),
        # else those of what a resumed night committed.
        kept = committed_schema(current_store, previous) if previous else committed_schema(version_store, already)
        self.settle_ids(plan, kept)
        plan.shards, plan.committed = shards, {**plan.committed, **copied}
        # Ids compared with the current version: the pieces to prepare, then (a resumed night) the files this
        # version committed already without copying them, whose documents are not deleted.
        pending_pieces = [piece for unit in plan.units for piece in unit]
        done = [s for s in shards if s.key not in unchanged and s.key not in plan.pieces]
        key_pieces = pending_pieces + [Piece(s, uid=len(pending_pieces) + i) for i, s in enumerate(done)]
        pool_files = [
            current_store.uri_of(current_store.path(name))
            for key, record in sorted(previous.items())
            if key not in unchanged
            for name in record["files"].get("data", [])
        ]
        return NightPlan(
            **vars(plan),
            root=root,
            version=version,
            current=current,
            previous=previous,
            current_store=current_store,
            unchanged=unchanged,
            key_pieces=key_pieces,
            pool_files=pool_files,
            night=night if resumed else None,
            stale_night=stale_night or bool(night and not resumed),
        )

    def start(self, plan: NightPlan, report: RunReport) -> None:
        """Open tonight's version: record it in _NIGHT.json (so a rerun resumes it), drop an abandoned night,
        copy unchanged files forward, and match tonight's documents with the current version's."""
        root, store = plan.root, plan.store
        if plan.night is None:
            abandoned = root.read_json(root.path(NIGHT))
            if abandoned and abandoned.get("version") not in (plan.current, plan.version):
                _remove_version(root, abandoned["version"], plan.current)  # another base or model: never current
            root.write_json(
                root.path(NIGHT), {"version": plan.version, "base": plan.current, "fingerprint_id": self.fp_id}
            )
        already = store.read_commits()
        for key in sorted(plan.unchanged):
            if key not in already:
                plan.committed[key] = store.copy_shard_from(plan.current_store, plan.previous[key])
        # The embed stages and the report write into tonight's version.
        self.cfg = self.cfg.model_copy(update={"output": self.cfg.output.model_copy(update={"uri": store.uri})})
        if plan.pending:  # the documents to prepare are matched (Ray tasks); a resumed night keeps its count
            deleted = 0
            if plan.pool_files:
                plan.carry, deleted = match_previous(self.cfg, plan.key_pieces, plan.pool_files, plan.id_types["id"])
            night = root.read_json(root.path(NIGHT)) or {}
            root.write_json(root.path(NIGHT), {**night, "deleted": deleted})

    def describe(self, plan: NightPlan) -> str:
        return (
            f"nightly: {len(plan.pending)} changed or new input files to prepare, {len(plan.unchanged)} "
            f"carried whole from {plan.current or 'nothing'}, model {self.model_source}"
        )

    def preview_lines(self, plan: NightPlan) -> list[str]:
        return [
            f"nightly    version {plan.version} on top of {plan.current or 'nothing'}: {len(plan.unchanged)} "
            f"unchanged files copied whole; the documents of the others are compared by (id, content hash) "
            f"with {len(plan.pool_files)} files of the current version"
        ]

    def carry(self, plan: NightPlan):
        return plan.carry

    def int8_stores(self, plan: NightPlan) -> list:
        """Tonight's version, then the current one: carried int8 codes keep the range they were made with."""
        return [plan.store] + ([plan.current_store] if plan.current_store else [])

    def after_commits(self, plan: NightPlan, records: dict[str, dict], report: RunReport) -> dict[str, dict]:
        records = super().after_commits(plan, records, report)
        # The night's counts come from the commit records, so a resumed night reports all of its work.
        report.changes.clear()
        for record in records.values():
            report.changes.update(record.get("changes", {}))
        report.deleted = (plan.root.read_json(plan.root.path(NIGHT)) or {}).get("deleted", 0)
        report.rows_embedded = sum(r["rows"]["embedded"] for r in records.values())
        report.nightly = {
            "version": plan.version,
            "previous_version": plan.current,
            "outcome": f"{plan.version} is now current",
        }
        return records

    def after_publish(self, plan: NightPlan, records: dict[str, dict], report: RunReport) -> None:
        root = plan.root
        # The very last step readers can see: the pointer moves in one write.
        root.check_guard()
        root.write_text(root.path(CURRENT), plan.version)
        root.write_json(root.path(REPORT), report.to_dict())
        root.fs.rm_file(root.path(NIGHT))
        _prune(root, keep=self.cfg.nightly.keep_versions, current=plan.version, log=self.log)


def _remove_version(root: OutputStore, name: str, current: str | None) -> None:
    if name and name != current and root.fs.exists(root.path(name)):
        root.remove_tree(root.path(name))


def _prune(root: OutputStore, *, keep: int, current: str, log) -> None:
    """Delete versions older than the newest `keep` (only ever after the pointer moved; never the current)."""
    versions = _versions(root)
    for name in versions[: max(0, len(versions) - keep)]:
        if name != current:
            log(f"nightly: deleting old version {name}")
            _remove_version(root, name, current)
