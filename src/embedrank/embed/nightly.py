"""Nightly incremental re-embedding into versioned outputs behind a pointer.

    OUTPUT/_CURRENT          the current version's folder name, e.g. "v=20261127T020000" (moved last)
    OUTPUT/v=<timestamp>/    one complete embed-job output per published night
    OUTPUT/_NIGHT.json       the night in progress: {version, base, fingerprint_id}; lets a rerun resume it
    OUTPUT/_report.json      the latest night's report (also inside its version)

Comparison is per shard, never on the driver: an input file whose key and version (ETag/mtime) match the
current version's commit record, under the same model fingerprint, is copied forward whole (no read, no
model); any other file is prepared as usual, and each prepare task loads that shard's previous rows to carry
every document whose id and content hash are unchanged (vectors included). Only new and changed documents
reach the model. A document that moved to another input file counts as deleted there and new here.
"""

from __future__ import annotations

import dataclasses
import posixpath
import time

from ..config import EmbedJobConfig
from ..io.sources import list_shards
from ..report import RunReport
from ..runtime.job import JobPlan, run_job
from ..runtime.store import REPORT, OutputStore
from .job import EmbedJob, check_embed_config, plan_shards

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
    gone: list = dataclasses.field(default_factory=list)  # shard keys of the current version gone from the input


class NightlyJob(EmbedJob):
    """Publish tonight's version (or resume a killed night, or find nothing changed)."""

    NAME = "nightly"

    def plan(self, root: OutputStore, report: RunReport) -> NightPlan | None:
        cfg, log = self.cfg, self.log
        check_embed_config(cfg)
        current = root.read_text(root.path(CURRENT))
        current_store = OutputStore(f"{root.uri}/{current}", cfg.storage) if current else None
        previous = current_store.read_commits() if current_store else {}
        same_model = bool(previous) and all(r.get("fingerprint_id") == self.fp_id for r in previous.values())
        if previous and not same_model:
            log("nightly: the model fingerprint changed since the current version: every document is embedded "
                "again")
            previous = {}
        shards = list_shards(cfg.input.uri, fmt=cfg.input.format, storage_config=cfg.storage)
        same_file = {s.key for s in shards
                     if s.key in previous and previous[s.key]["shard"]["version"] == s.version}
        # A shard that gave up rows to another shard's copy of their ids is prepared again when anything
        # changed, never copied whole: that copy may be gone.
        unchanged = {k for k in same_file if not previous[k].get("cross_shard_duplicates")}
        gone = [k for k in previous if k not in {s.key for s in shards}]

        night = root.read_json(root.path(NIGHT))
        if night and night.get("version") == current:  # the pointer moved, the cleanup did not finish
            root.fs.rm_file(root.path(NIGHT))
            night = None
        if current and not night and len(same_file) == len(shards) and not gone:
            log(f"nightly: nothing changed since {current}; it stays current")
            report.shards_total = len(shards)
            report.changes["carried"] = sum(r["rows"]["embedded"] for r in previous.values())
            report.nightly = {"version": current, "previous_version": current, "outcome": "nothing changed"}
            root.write_json(root.path(REPORT), report.finish().to_dict())
            return None

        if night and night.get("base") == current and night.get("fingerprint_id") == self.fp_id:
            version = night["version"]
            log(f"nightly: resuming {version} (on top of {current})")
        else:
            if night:  # an abandoned night on another base or model: it never became current
                _remove_version(root, night["version"], current)
            version = _new_version_name(root)
            root.write_json(root.path(NIGHT), {"version": version, "base": current, "fingerprint_id": self.fp_id})
        version_store = OutputStore(f"{root.uri}/{version}", cfg.storage, guard=root.guard)
        # The embed stages write into tonight's version.
        self.cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, uri=version_store.uri))

        # Whole files that did not change are copied forward without being read.
        already = version_store.read_commits()
        for key in sorted(unchanged):
            if key not in already:
                version_store.copy_shard_from(current_store, previous[key])
        plan = plan_shards(self.cfg, self.fp, version_store, shards)
        self.unchanged = unchanged
        return NightPlan(**vars(plan), root=root, version=version, current=current, previous=previous,
                         current_store=current_store, gone=gone)

    def describe(self, plan: NightPlan) -> str:
        return (f"nightly: {len(plan.pending)} changed or new input files to prepare, {len(self.unchanged)} "
                f"carried whole from {plan.current or 'nothing'}, model {self.model_source}")

    def carry_from(self, plan: NightPlan) -> dict[str, list[str]]:
        store = plan.current_store
        return {s.key: [store.uri_of(store.path(f)) for f in plan.previous[s.key]["files"]["data"]]
                for s in plan.pending if s.key in plan.previous}

    def after_commits(self, plan: NightPlan, records: dict[str, dict], report: RunReport) -> dict[str, dict]:
        records = super().after_commits(plan, records, report)
        # The night's counts come from the commit records, so a resumed night reports all of its work.
        report.changes.clear()
        for record in records.values():
            report.changes.update(record.get("changes", {}))
        report.deleted = sum(r.get("deleted", 0) for r in records.values())
        report.deleted += sum(plan.previous[k]["rows"]["embedded"] for k in plan.gone)
        report.rows_embedded = sum(r["rows"]["embedded"] for r in records.values())
        report.nightly = {"version": plan.version, "previous_version": plan.current,
                          "outcome": f"{plan.version} is now current"}
        return records

    def after_publish(self, plan: NightPlan, records: dict[str, dict], report: RunReport) -> None:
        root = plan.root
        # The very last step readers can see: the pointer moves in one write.
        root.check_guard()
        root.write_text(root.path(CURRENT), plan.version)
        root.write_json(root.path(REPORT), report.to_dict())
        root.fs.rm_file(root.path(NIGHT))
        _prune(root, keep=self.cfg.nightly.keep_versions, current=plan.version, log=self.log)


def run_nightly(cfg: EmbedJobConfig, log=print) -> RunReport:
    """Publish tonight's version (or resume a killed night, or find nothing changed)."""
    return run_job(NightlyJob(cfg, log))


def _remove_version(root: OutputStore, name: str, current: str | None) -> None:
    if name and name != current and root.fs.exists(root.path(name)):
        root.fs.rm(root.path(name), recursive=True)


def _prune(root: OutputStore, *, keep: int, current: str, log) -> None:
    """Delete versions older than the newest `keep` (only ever after the pointer moved; never the current)."""
    versions = _versions(root)
    for name in versions[: max(0, len(versions) - keep)]:
        if name != current:
            log(f"nightly: deleting old version {name}")
            _remove_version(root, name, current)
