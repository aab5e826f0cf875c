"""The one job skeleton: lock -> plan -> graph -> commit shard by shard -> publish.

Embed, nightly, rerank and retrieve are each a `Job`: a plan, a Ray Data graph and a few hooks (registry.py
lists them). `run_job` drives any of them the same way:

    lock the output (one run at a time)
    plan (driver, no model, no write): which shards are committed, pending, stale; refuse mistakes before Ray
         starts. `plan_start` and `plan_shards` are the steps every plan shares.
    start: the writes a plan decided (nightly: tonight's version, files copied forward); a dry run skips it
    graph: shards -> CPU tasks -> model actor pool -> write tasks (staging only, no visible side effect)
    commit: the driver streams the writer's FILE_META rows; a shard whose rows are all accounted for is moved
            into place and its commit record written (runtime/commits.py)
    after_commits hook (embed: ids shared by several shards), stale shards removed
    publish: manifest and report (_embedrank/), staging removed; after_publish hook (nightly: move _CURRENT)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from .. import schema
from ..io import storage
from ..io.pieces import plan_units
from ..io.sources import list_shards, peek_all
from ..metrics import read_qrels
from ..models.checkpoints import BUILTIN_MODEL, check_qwen3, resolve_model_or_builtin
from ..report import RunReport
from ..testing import faults
from .cluster import (
    Resources,
    check_resources,
    data_context,
    init_ray,
    progress_board,
    release_actor,
    with_gpus,
)
from .commits import CommitTracker, fingerprint_id, publish, records_digest, split_by_commits
from .interrupts import Interrupted
from .lock import hold_lock
from .progress import LiveProgress
from .store import OutputStore, check_separate, new_run_id


@dataclass
class JobPlan:
    """What a run will do, decided on the driver before any model loads."""

    store: OutputStore  # where shards commit (nightly: tonight's version under the locked root)
    shards: list  # every input shard
    pending: list  # shards this run computes
    committed: dict[str, dict]  # shard key -> commit record, for shards kept as they are
    stale: dict[str, dict] = field(default_factory=dict)  # committed shards no longer in the input: records
    units: list = field(default_factory=list)  # the pending shards as units of work (io/pieces.py)
    pieces: dict[str, int] = field(default_factory=dict)  # shard key -> pieces it is cut into
    # shard key -> (uri, why): files found truncated or corrupt in planning and skipped (input.on_bad_shard)
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)
    infos: dict = field(default_factory=dict)  # shard key -> io/sources.ShardInfo of the pending shards
    id_types: dict[str, str] = field(default_factory=dict)  # id column -> ids.INT64 | ids.STRING (ids.py)
    chunk_id: bool = True  # embed, chunk mode: write the chunk_id key (False: the output's files have none)
    passthrough_types: dict = field(default_factory=dict)  # embed: passthrough column -> its Arrow type


class Job:
    """One kind of run. Subclasses set NAME, VERB and MODEL_KIND and implement `fingerprint`, `plan` and
    `build_graph`; the other hooks do nothing by default."""

    NAME = ""  # embed | rerank | nightly | retrieve: the report's job name
    VERB = ""  # what the model does to a shard, for the log: embed | score
    MODEL_KIND = "embedding"  # embedding | reranker
    MIRROR = False  # True: committed shards gone from the input are removed (nightly); else only with prune
    DATA_FOLDER = "vectors"  # the output folder of its committed rows (runtime/store.py)
    MODEL_STAGE = True  # False: no model actors report progress (retrieve); the display counts shards only
    POOL = "embed"  # the config section of its model actors
    # The output layout it refuses to write into, and the fix the message gives.
    REFUSES = ("nightly", "Choose another output.uri")

    def __init__(self, cfg, log=print):
        self.cfg = cfg
        self.log = log
        self.model_source = self.resolve_model()
        self.fp = self.fingerprint()
        self.fp_id = fingerprint_id(self.fp)

    def resolve_model(self) -> str:
        """The model source the run uses (a default resolved, the built-in model offline)."""
        return resolve_model_or_builtin(self.cfg.model.source, log=self.log, kind=self.MODEL_KIND)

    # -- what a job defines ------------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """Everything that changes an output row: a committed shard is kept only under an equal fingerprint."""
        raise NotImplementedError

    def plan(self, root: OutputStore, report: RunReport) -> JobPlan | None:
        """Decide the run under the root's lock; None when the job finished in planning (report written)."""
        raise NotImplementedError

    def build_graph(self, plan: JobPlan, staging_uri: str, report: RunReport):
        """The Ray Data graph whose output rows are FILE_META rows of staged files."""
        raise NotImplementedError

    def start(self, plan: JobPlan, report: RunReport) -> None:
        """The writes the plan decided, before any work (nightly: tonight's version); a dry run skips this."""

    def finalizer(self, plan: JobPlan, staging_uri: str, report: RunReport):
        """`finalize(shard_key, staged, record) -> (staged, extra record fields)` before each commit, or None."""
        return None

    def after_commits(self, plan: JobPlan, records: dict[str, dict], report: RunReport) -> dict[str, dict]:
        return records

    def manifest_extra(self, records: dict[str, dict]) -> dict:
        return {}

    def after_publish(self, plan: JobPlan, records: dict[str, dict], report: RunReport) -> None:
        pass

    dry_run = False  # set by preview_job: plan() must then change nothing
    progress_board: str | None = None  # set by run_job: the name of the run's ProgressBoard, for the stages

    def resources(self) -> Resources:
        """What the run needs placed at once: its model actors (the POOL section) and one CPU task."""
        pool = getattr(self.cfg, self.POOL)
        gpus = pool.num_gpus or 0.0  # decided from the cluster before this is asked (with_gpus)
        return Resources(pool.min_actors, pool.max_actors, pool.num_cpus, gpus, self.cfg.prepare.num_cpus)

    def check_columns(self, shard, columns: dict[str, str]) -> None:
        """Refuse a pending shard whose columns (from its first rows or footer) cannot work as configured."""

    def list_inputs(self) -> list:
        return list_shards(self.cfg.input.uri, fmt=self.cfg.input.format, storage_config=self.cfg.storage)

    # -- planning steps every job shares -----------------------------------------------------------------
    def plan_start(self, root: OutputStore) -> list:
        """Refuse an output inside an input (or the reverse), an output of another layout and unreadable qrels,
        then list the input shards."""
        cfg = self.cfg
        for name in ("input", "corpus"):
            uri = getattr(getattr(cfg, name, None), "uri", None)
            if uri:
                check_separate(uri, cfg.output.uri, cfg.storage, key=f"{name}.uri")
        root.refuse_layout(self.REFUSES[0], self.NAME, self.REFUSES[1])
        if getattr(cfg, "qrels", None):
            read_qrels(cfg.qrels, cfg.storage)  # a qrels mistake stops the run before any work
        return self.list_inputs()

    def plan_shards(self, store: OutputStore, shards: list, split: bool = True) -> JobPlan:
        """Split `shards` by the commits `store` holds, peek those still to do (bad files found here are
        skipped or stop the run, input.on_bad_shard), check their columns and cut them into units of work
        (`split=False` keeps every file whole)."""
        cfg = self.cfg
        committed, pending, stale = split_by_commits(store, shards, self.fp, self.DATA_FOLDER)
        infos, bad = peek_all(pending, cfg.storage, skip_bad=cfg.input.on_bad_shard == "skip")
        pending = [s for s in pending if s.key not in bad]
        for shard in pending:
            self.check_columns(shard, infos[shard.key].columns)
        units, pieces = plan_units(pending, infos, cfg.prepare.rows_per_task, cfg.prepare.mb_per_task, split)
        return JobPlan(store, shards, pending, committed, stale, units, pieces, bad, infos)

    def check_model(self) -> None:
        """The checkpoint's config.json, before Ray starts: another architecture is one line, not a dead actor."""
        check_qwen3(
            self.model_source,
            revision=self.cfg.model.revision,
            storage_options=storage.storage_options(self.cfg.storage),
            kind=self.MODEL_KIND,
        )

    def prunes(self) -> bool:
        """Whether committed shards gone from the input are removed (nightly always; else output.prune)."""
        return self.MIRROR or bool(getattr(self.cfg.output, "prune", False))

    def preview_lines(self, plan: JobPlan) -> list[str]:
        """Extra lines of `--dry-run` output."""
        return []

    def describe(self, plan: JobPlan) -> str:
        return (
            f"embedrank {self.NAME}: {len(plan.pending)} of {len(plan.shards)} shards to {self.VERB} "
            f"({len(plan.committed)} already committed), model {self.model_source}"
        )

    # -- shared ----------------------------------------------------------------------------------------
    def new_report(self, run_id: str) -> RunReport:
        return RunReport(
            output=self.cfg.output.uri,
            model=self.model_source,
            run_id=run_id,
            job=self.NAME,
            builtin_model=self.model_source == BUILTIN_MODEL,
        )

    def base_record(self, run_id: str) -> dict:
        return {"fingerprint": self.fp, "fingerprint_id": self.fp_id, "run_id": run_id}


def run_job(job: Job) -> RunReport:
    """Run (or finish) a job. Safe to rerun: committed shards are skipped."""
    root = OutputStore(job.cfg.output.uri, job.cfg.storage, data_folder=job.DATA_FOLDER)
    report = job.new_report(new_run_id())
    existed = storage.is_remote(root.uri) or os.path.exists(root.root)
    try:
        with hold_lock(root, report.run_id, job.cfg.output.lock_timeout_s, job.log):
            return _run_locked(job, root, report)
    except Interrupted as stop:
        stop.committed, stop.job = report.shards_committed, job.NAME
        raise
    finally:
        if not existed:  # a run refused or stopped before it wrote anything leaves no empty folders behind
            _remove_empty_folders(root.root)


def _remove_empty_folders(top: str) -> None:
    """Remove `top` and the folders below it when they hold no file (a local output this run created)."""
    for folder, _, files in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        if not files and not os.listdir(folder):
            os.rmdir(folder)


def _run_locked(job: Job, root: OutputStore, report: RunReport) -> RunReport:
    """The run under the output's lock."""
    faults.driver_point("planning")
    plan = job.plan(root, report)
    faults.driver_point("planned")
    if plan is None:
        return report
    job.start(plan, report)
    report.shards_total = len(plan.shards)
    report.shards_skipped = len(plan.committed)
    records = dict(plan.committed)
    for uri, error in plan.bad.values():
        report.add_bad_shard(uri, error)
    bad = set(plan.bad)
    if plan.pending:
        job.check_model()
        job.log(job.describe(plan))
        done, bad_now = _execute(job, plan, report)
        records.update(done)
        bad |= bad_now
    elif bad:
        job.log(
            f"embedrank {job.NAME}: nothing to {job.VERB}: {len(bad)} bad shards skipped, the others are "
            "already committed"
        )
    else:
        job.log(f"embedrank {job.NAME}: nothing to {job.VERB}, all {len(plan.shards)} shards are already committed")
    if bad:
        # A bad file's commit of an earlier version of it (if any) stays as it is, as after a stopped run.
        earlier = plan.store.read_commits()
        records.update({key: earlier[key] for key in bad if key in earlier})
    prune = job.prunes()
    if not prune:  # never deleted unless asked: kept (and checked for shared ids), listed in the report
        records.update(plan.stale)
        report.shards_kept_not_in_input = sorted(plan.stale)
    before = records_digest(records)
    records = job.after_commits(plan, records, report)
    if prune:
        for key in plan.stale:
            plan.store.remove_shard(key)
            report.shards_removed += 1
    # A rerun that changed nothing keeps the report of the run that did the work.
    changed = bool(plan.pending) or bool(bad) or (prune and bool(plan.stale)) or records_digest(records) != before
    publish(plan.store, records, job.fp, report.finish(), job.manifest_extra(records), write_report=changed)
    faults.driver_point(f"{job.NAME}_published")  # nightly: published, the pointer not yet moved
    job.after_publish(plan, records, report)
    return report


def _execute(job: Job, plan: JobPlan, report: RunReport) -> tuple[dict[str, dict], set[str]]:
    """Build the graph of the pending shards and drive it, committing each shard as it completes: (commit
    records, keys of the shards skipped as bad)."""
    init_ray(job.cfg)
    faults.driver_point("ray_started")
    pool = getattr(job.cfg, job.POOL, None)
    if pool is not None and pool.num_gpus is None:
        job.cfg = job.cfg.model_copy(update={job.POOL: with_gpus(pool, job.POOL, job.log)})
    check_resources(job.resources(), job.log)
    with data_context(job.cfg.ray.verbose):  # the caller's DataContext is as it was afterwards
        return _drive_graph(job, plan, report)


def _drive_graph(job: Job, plan: JobPlan, report: RunReport) -> tuple[dict[str, dict], set[str]]:
    staging_uri = plan.store.uri_of(plan.store.staging_dir(report.run_id))
    job.progress_board, board = progress_board(plan.units)
    ds = job.build_graph(plan, staging_uri, report)
    tracker = CommitTracker(
        plan.store,
        plan.pending,
        report,
        job.base_record(report.run_id),
        finalize=job.finalizer(plan, staging_uri, report),
        pieces=plan.pieces,
        rows_from_zero={p.shard.key for unit in plan.units for p in unit if p.rows_from_zero},
    )
    live = LiveProgress(
        board,
        report=report,
        shards_total=len(plan.pending),
        pool_size=job.resources().max_actors,
        verb=report.done_word,
        interval_s=job.cfg.progress_interval_s,
        log=job.log,
        model_stage=job.MODEL_STAGE,
    ).start()
    try:
        return drive(ds, tracker, report), set(tracker.bad)
    finally:
        live.stop()
        release_actor(job.progress_board)


def merging_finalizer(task, out_name: str, merge) -> object:
    """A finalizer that turns a complete shard's staged data files into one file, OUT_NAME beside them, by a
    Ray task (`task`) before the shard commits. `merge(remote_task, key, files, out_path, record)` runs it and
    returns the extra commit-record fields; the merged file is then the shard's only data file."""
    from .cluster import remote_task

    remote = remote_task(task)

    def finalize(key: str, staged: dict, record: dict) -> tuple[dict, dict]:
        files = staged.get("data")
        if not files:
            return staged, merge(None, key, [], None, record)
        out_path = files[0].rsplit("/", 1)[0] + "/" + out_name
        extra = merge(remote, key, files, out_path, record)
        return {**staged, "data": [out_path]}, {"data_pieces": [0], **extra}

    return finalize


def drive(ds, tracker: CommitTracker, report: RunReport) -> dict[str, dict]:
    """Stream the writer's FILE_META rows into the tracker, which commits each shard once it is complete."""
    stream_start = time.time()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for meta in batch.to_pylist():
            tracker.add(schema.decode_file_meta(meta))
    report.stream_s = time.time() - stream_start
    missing = tracker.missing()
    if missing:
        raise RuntimeError(
            f"{len(missing)} shards did not complete ({missing[:3]}...); rerun the same command to finish them"
        )
    return tracker.records


class PlanPreview:
    """What `--dry-run` prints: the plan of a run, decided without a lock, a model or a write."""

    def __init__(self, job: Job, plan: JobPlan | None):
        self.job, self.plan = job, plan
        self.outputs: list[str] = []

    def summary(self) -> str:
        job, plan = self.job, self.plan
        head = f"embedrank {job.NAME} --dry-run: {job.cfg.output.uri}"
        if plan is None:
            return f"{head}\n  nothing to do: the input has not changed since the current version"
        pieces = [p for unit in plan.units for p in unit]
        cut = {p.shard.key for p in pieces if p.count > 1}
        rows = [p.row_end - p.row_start for p in pieces if p.row_start is not None]
        known_rows = sum(rows)
        prune = job.prunes()
        lines = [
            head,
            f"  shards     {len(plan.shards)} in the input: {len(plan.pending)} to {job.VERB}, "
            f"{len(plan.committed)} already committed",
            f"  work       {len(plan.units)} CPU tasks ({len(cut)} files cut into pieces), "
            f"~{sum(p.est_bytes for p in pieces) / 1e6:.0f} MB to read"
            + (f", {known_rows} rows in the pieces with a known row count" if rows else ""),
        ]
        if plan.bad:
            uri, error = next(iter(plan.bad.values()))
            lines.append(
                f"  bad        {len(plan.bad)} shards cannot be read and would be skipped "
                f"(input.on_bad_shard: skip), e.g. {uri}"
            )
        if plan.stale:
            lines.append(
                f"  not in input {len(plan.stale)} committed shards: "
                + ("would be removed" if prune else "kept (--prune removes them)")
            )
        if plan.id_types:
            lines.append("  ids        " + ", ".join(f"{column} as {kind}" for column, kind in plan.id_types.items()))
        for line in job.preview_lines(plan):
            lines.append(f"  {line}")
        lines.append(f"  model      {job.model_source} (not loaded); nothing was written")
        return "\n".join(lines)


def preview_job(job: Job) -> PlanPreview:
    """Plan a run and describe it, changing nothing (no lock is taken: the plan may be stale by the run)."""
    job.dry_run = True
    root = OutputStore(job.cfg.output.uri, job.cfg.storage, data_folder=job.DATA_FOLDER)
    plan = job.plan(root, job.new_report("dry-run"))
    if plan is not None and plan.pending:
        job.check_model()
    return PlanPreview(job, plan)
