"""Ray for a run: join the cluster or start a local one, and the building blocks of a run's Ray Data graph.

Every job's graph has the same shape: shard descriptions -> CPU tasks (read, validate, tokenise) -> a model
actor pool -> write tasks. The helpers here make those stages the same way in every job.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

from . import interrupts
from .progress import board_handle, prepared_counts

WRITE_TASK_CPUS = 0.25


def init_ray(cfg) -> None:
    """Join the cluster named by the config or RAY_ADDRESS, else start a local Ray."""
    import logging

    import ray

    if ray.is_initialized():
        return
    verbose = cfg.ray.verbose
    kwargs = {
        "include_dashboard": False,
        "ignore_reinit_error": True,
        "log_to_driver": True,
        # Ray's INFO lines ("Started a local Ray instance", ...) only with --verbose; warnings always.
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    address, source = cfg.ray.address, "ray.address"
    if not address:
        address, source = os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS"
    if address:  # `ray job submit` sets RAY_ADDRESS: join that cluster, whatever the config says
        from .connect import join_cluster

        # A bounded wait; an address or a token that does not work stops the run in one line naming the fix.
        join_cluster(address, source, **kwargs)
    else:
        # A private Ray of this process, reachable by nobody else: Ray's warning that it turned token auth on
        # (on every start) says nothing to act on here, so it shows only with --verbose.
        auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
        auth_level = auth_log.level
        auth_log.setLevel(logging.NOTSET if verbose else logging.ERROR)
        try:
            ray.init(num_cpus=cfg.ray.num_cpus, **kwargs)
        finally:
            auth_log.setLevel(auth_level)
    interrupts.reinstall()  # Ctrl-C stays the run's, whatever Ray's start-up did with the handlers


@dataclass(frozen=True)
class Resources:
    """What a run needs placed at once: its first workers (model actors or scoring tasks) and one CPU task."""

    min_actors: int
    max_actors: int
    actor_cpus: float
    actor_gpus: float
    task_cpus: float


def check_resources(resources: Resources, log) -> None:
    """Say what the run needs when the cluster has less right now (an autoscaler may still add it): a run that
    cannot place its model actors and one CPU task otherwise waits without a word."""
    import ray

    have = ray.cluster_resources()
    need = {
        "CPU": resources.min_actors * resources.actor_cpus + resources.task_cpus,
        "GPU": resources.min_actors * resources.actor_gpus,
    }
    short = {k: v for k, v in need.items() if v and have.get(k, 0.0) < v}
    if short:
        log(
            "embedrank: waiting for resources: the run needs "
            + ", ".join(f"{v:g} {k}" for k, v in need.items() if v)
            + f" (the first of concurrency x num_cpus/num_gpus of the model actors, plus prepare.num_cpus for a "
            f"CPU task); the cluster has {', '.join(f'{have.get(k, 0.0):g} {k}' for k in short)}. Add nodes (or "
            "let the autoscaler), or lower concurrency / num_cpus / num_gpus"
        )


def with_gpus(pool, section: str, log):
    """`pool` (an ActorPoolConfig) with num_gpus decided when the config left it open: one GPU per actor where
    the cluster has GPUs or an accelerator_type is asked for (an autoscaler adds such nodes), as ray.data.llm's
    processors do, else CPU actors, said once."""
    import ray

    if pool.num_gpus is not None:
        return pool
    if not ray.is_initialized():  # a Dataset not run yet: Ray Data would start Ray at its first use anyway
        ray.init()
    gpus = 1.0 if pool.accelerator_type else ray.cluster_resources().get("GPU", 0.0)
    if not gpus:
        log(f"embedrank: the cluster has no GPUs: the model actors run on CPU (set {section}.num_gpus to choose)")
    return pool.model_copy(update={"num_gpus": 1.0 if gpus else 0.0})


def shutdown_ray() -> None:
    """Disconnect from Ray (and stop a local Ray this process started)."""
    import ray

    ray.shutdown()


class _ErrorsHidden:
    """A logging filter passing everything below ERROR."""

    def filter(self, record) -> bool:
        return record.levelno < 40  # logging.ERROR


_scope = {"depth": 0, "saved": None}
_scope_lock = threading.Lock()


@contextlib.contextmanager
def data_context(verbose: bool):
    """Ray Data settings of a run's graph, for the block only: the caller's DataContext and Ray Data's console
    logging are as they were afterwards (a notebook keeps its progress bars). Jobs that run at once (`embedrank
    run`) share one scope: the settings are put back when the last of them ends."""
    with _scope_lock:
        if _scope["depth"] == 0:
            _scope["saved"] = _current_settings()
        _scope["depth"] += 1
        _apply(verbose)
    try:
        yield
    finally:
        with _scope_lock:
            _scope["depth"] -= 1
            if _scope["depth"] == 0:
                _restore(_scope.pop("saved"))
                _scope["saved"] = None


def _console_handlers():
    import logging

    return [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]


def _current_settings() -> dict:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    return {
        "context": (ctx, ctx.enable_progress_bars, ctx.raise_original_map_exception),
        "handlers": [(h, h.level, list(h.filters)) for h in _console_handlers()],
    }


def _restore(saved: dict) -> None:
    ctx, bars, original = saved["context"]
    ctx.enable_progress_bars, ctx.raise_original_map_exception = bars, original
    for handler, level, filters in saved["handlers"]:
        handler.setLevel(level)
        handler.filters[:] = filters


def _apply(verbose: bool) -> None:
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    # embedrank shows its own progress (runtime/progress.py); Ray Data's bars and its INFO lines (execution
    # plans, a block of operator counters every 10 s when stdout is not a terminal) only with --verbose.
    ctx.enable_progress_bars = verbose
    if not verbose:
        from ray.util.debug import log_once

        # Ray Data logs once per process that its bars are off and how to turn them on: they are off on
        # purpose here (--verbose turns them on), so that hint is spent before it can be printed.
        log_once("ray_data_progress_manager_disabled")
    for handler in _console_handlers():  # the terminal; ray-data.log in the session keeps all
        handler.setLevel(logging.INFO if verbose else logging.WARNING)
        # Errors only with --verbose: the CLI prints a failure as its one line (a UserError) or as its own
        # traceback, and Ray Data's copy of it (the operator's traceback, a screen long) would come first.
        if not verbose and not any(isinstance(f, _ErrorsHidden) for f in handler.filters):
            handler.addFilter(_ErrorsHidden())
    # A UserError raised in a task or actor reaches the driver as itself (inside Ray's RayTaskError, which is
    # also an instance of its class), so the CLI prints its one line. Ray Data's default wrapper,
    # UserCodeException, loses the original exception when it crosses processes.
    ctx.raise_original_map_exception = True


def units_dataset(units: list):
    """One row (the unit's pieces as JSON, io/pieces.py) and one block per unit: a task per unit downstream."""
    import ray.data

    from ..io.pieces import unit_row

    return ray.data.from_items([unit_row(unit) for unit in units], override_num_blocks=max(1, len(units)))


def cpu_stage(
    ds,
    fn,
    *,
    num_cpus: float,
    memory: int,
    batch_size: int | None,
    batch_format: str,
    fn_kwargs: dict,
    board: str | None = None,
):
    """A CPU task stage (read, validate, tokenise) that Ray Data never fuses into the model actors.

    `memory` (bytes, io/pieces.task_memory) follows the size of the units read; a request of its own also
    gives these tasks other remote arguments than the actor stage, which is what stops Ray Data from fusing
    tokenising into the model actors. With `board` (a progress board's name, runtime/progress.py) the stage
    reports the rows and model tokens it prepares, as it goes.
    """
    if board:
        fn = reporting_to(board, fn)
    return ds.map_batches(
        fn, batch_size=batch_size, batch_format=batch_format, num_cpus=num_cpus, memory=memory, fn_kwargs=fn_kwargs
    )


def reporting_to(board: str, fn):
    """`fn` telling the board what it prepares: the rows and model tokens of every table it returns or yields
    that has token counts (n_tokens), and the bytes of every unit of work (a `pieces` batch) it has read."""
    import functools
    import inspect

    def report(handle, table):
        if "n_tokens" in table.column_names:
            handle.prepared.remote(*prepared_counts(table))
        return table

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)  # keeps the stage's name in Ray's views
        def prepare_and_report(batch, **kwargs):
            handle = board_handle(board)
            for table in fn(batch, **kwargs):
                yield report(handle, table)
            if "pieces" in batch:
                handle.unit_read.remote(unit_bytes(batch))

        return prepare_and_report

    @functools.wraps(fn)
    def call_and_report(batch, **kwargs):
        return report(board_handle(board), fn(batch, **kwargs))

    return call_and_report


def unit_bytes(batch) -> int:
    from ..io.pieces import unit_pieces

    return sum(p.est_bytes for value in batch["pieces"] for p in unit_pieces(value))


def actor_stage(ds, actor_cls, *, pool, constructor_kwargs: dict, board: str | None = None):
    """The model actor pool of a job, from its ActorPoolConfig; each actor gets the run's crash ledger and
    progress board by name.

    By name, not by handle: an actor handle among the constructor arguments puts them in the object store,
    where Ray cannot promise them to a restarted actor (it says so on every run, core_worker.cc), and this
    pool must restart its actors (runtime/crash_guard.py).
    """
    import ray.data

    # Actor restarts: Ray Data already restarts forever (-1); pass a limit only when one is configured.
    restarts = {} if pool.max_restarts == -1 else {"max_restarts": pool.max_restarts}
    # One actor task per batch: a CPU task's output arrives as one block (Ray Data gathers what it yields up to
    # its block size), and an actor hands on its output only when its task ends, so without this a unit of
    # many small files came out of the model, was written and committed only as a whole, at its very end.
    ds = ds.repartition(target_num_rows_per_block=pool.batch_size)
    return ds.map_batches(
        actor_cls,
        batch_size=pool.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        num_gpus=pool.num_gpus,
        num_cpus=pool.num_cpus,
        **({"accelerator_type": pool.accelerator_type} if pool.accelerator_type else {}),
        **restarts,
        fn_constructor_kwargs=dict(
            constructor_kwargs,
            torch_threads=pool.torch_threads,
            ledger=crash_ledger(),
            board=board,
            max_worker_crashes=pool.max_worker_crashes,
        ),
    )


def write_stage(ds, fn, *, rows_per_file: int, fn_kwargs: dict):
    """Write tasks: each stages its batch under the run's staging folder and returns FILE_META rows.

    A write task starts once `rows_per_file` rows arrived (or the input ended): the driver can commit a shard
    only after the write of its last rows (io/pieces.write_batch_rows keeps that wait short)."""
    return ds.map_batches(
        fn, batch_size=rows_per_file, batch_format="pyarrow", num_cpus=WRITE_TASK_CPUS, fn_kwargs=fn_kwargs
    )


_run_actors: dict = {}  # name -> handle of the named actors this driver made: they live until released


def named_actor(cls, prefix: str, *args):
    """A small actor of this run (no CPU, restarted if its node dies), found by the returned name."""
    import uuid

    import ray

    name = f"embedrank-{prefix}-{uuid.uuid4().hex[:12]}"
    _run_actors[name] = (
        ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(cls).options(name=name).remote(*args)
    )
    return name


def release_actor(name: str) -> None:
    """Stop one named actor of this driver. Only by name: `embedrank run` drives several jobs at once, each
    with its own."""
    import ray

    handle = _run_actors.pop(name, None)
    if handle is not None:
        ray.kill(handle)


def crash_ledger() -> str:
    """The name of a new CrashLedger actor (runtime/crash_guard.py) for one model actor pool."""
    from .crash_guard import CrashLedger

    return named_actor(CrashLedger, "crash-ledger")


def progress_board(units: list) -> tuple[str, object]:
    """(name, handle) of a new ProgressBoard (runtime/progress.py) for a run of these units of work."""
    import ray

    from .progress import ProgressBoard

    name = named_actor(ProgressBoard, "progress", len(units), sum(p.est_bytes for unit in units for p in unit))
    return name, ray.get_actor(name)


def remote_task(fn, *, num_returns: int = 1):
    """`fn` as a small Ray task (bookkeeping work of the driver: ranking, duplicate checks)."""
    import ray

    return ray.remote(num_cpus=WRITE_TASK_CPUS, num_returns=num_returns)(fn)
