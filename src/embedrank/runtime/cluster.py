"""Ray for a run: join the cluster or start a local one, and the building blocks of a run's Ray Data graph.

Every job's graph has the same shape: shard descriptions -> CPU tasks (read, validate, tokenise) -> a model
actor pool -> write tasks. The helpers here make those stages the same way in every job.
"""

from __future__ import annotations

import os

WRITE_TASK_CPUS = 0.25


def init_ray(cfg) -> None:
    """Join the cluster named by the config or RAY_ADDRESS, else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": True}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:  # `ray job submit` sets RAY_ADDRESS: join that cluster, whatever the config says
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, **kwargs)


def check_resources(pool, prepare, log) -> None:
    """Say what the run needs when the cluster has less right now (an autoscaler may still add it): a run that
    cannot place its model actors and one CPU task otherwise waits without a word."""
    import ray

    have = ray.cluster_resources()
    need = {"CPU": pool.min_actors * pool.num_cpus + prepare.num_cpus, "GPU": pool.min_actors * pool.num_gpus}
    short = {k: v for k, v in need.items() if v and have.get(k, 0.0) < v}
    if short:
        log("embedrank: waiting for resources: the run needs "
            + ", ".join(f"{v:g} {k}" for k, v in need.items() if v)
            + f" (min_actors x num_cpus/num_gpus of the model actors, plus prepare.num_cpus for a CPU task); the "
            f"cluster has {', '.join(f'{have.get(k, 0.0):g} {k}' for k in short)}. Add nodes (or let the "
            "autoscaler), or lower min_actors / num_cpus / num_gpus")


def configure_data_context(progress_bars: bool) -> None:
    """Ray Data settings of every run's graph (the driver's context travels with the tasks)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress_bars
    # A UserError raised in a task or actor reaches the driver as itself (inside Ray's RayTaskError, which is
    # also an instance of its class), so the CLI prints its one line. Ray Data's default wrapper,
    # UserCodeException, loses the original exception when it crosses processes.
    ctx.raise_original_map_exception = True


def units_dataset(units: list):
    """One row (the unit's pieces as JSON, io/pieces.py) and one block per unit: a task per unit downstream."""
    import ray.data

    from ..io.pieces import unit_row

    return ray.data.from_items([unit_row(unit) for unit in units], override_num_blocks=max(1, len(units)))


def cpu_stage(ds, fn, *, num_cpus: float, memory: int, batch_size: int | None, batch_format: str,
              fn_kwargs: dict):
    """A CPU task stage (read, validate, tokenise) that Ray Data never fuses into the model actors.

    `memory` (bytes, io/pieces.task_memory) follows the size of the units read; a request of its own also
    gives these tasks other remote arguments than the actor stage, which is what stops Ray Data from fusing
    tokenising into the model actors.
    """
    return ds.map_batches(fn, batch_size=batch_size, batch_format=batch_format, num_cpus=num_cpus,
                          memory=memory, fn_kwargs=fn_kwargs)


def actor_stage(ds, actor_cls, *, pool, constructor_kwargs: dict):
    """The model actor pool of a job, from its ActorPoolConfig; each actor gets the run's crash ledger."""
    import ray.data

    # Actor restarts: Ray Data already restarts forever (-1); pass a limit only when one is configured.
    restarts = {} if pool.max_restarts == -1 else {"max_restarts": pool.max_restarts}
    return ds.map_batches(
        actor_cls, batch_size=pool.rows_per_batch, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        num_gpus=pool.num_gpus, num_cpus=pool.num_cpus, **restarts,
        fn_constructor_kwargs=dict(constructor_kwargs, torch_threads=pool.torch_threads, ledger=crash_ledger(),
                                   max_worker_crashes=pool.max_worker_crashes),
    )


def write_stage(ds, fn, *, rows_per_file: int, fn_kwargs: dict):
    """Write tasks: each stages its batch under the run's staging folder and returns FILE_META rows."""
    return ds.map_batches(fn, batch_size=rows_per_file, batch_format="pyarrow", num_cpus=WRITE_TASK_CPUS,
                          fn_kwargs=fn_kwargs)


def crash_ledger():
    """The run's CrashLedger actor (runtime/crash_guard.py): lives as long as the driver, needs no CPU."""
    import ray

    from .crash_guard import CrashLedger

    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(CrashLedger).remote()


def remote_task(fn, *, num_returns: int = 1):
    """`fn` as a small Ray task (bookkeeping work of the driver: ranking, duplicate checks)."""
    import ray

    return ray.remote(num_cpus=WRITE_TASK_CPUS, num_returns=num_returns)(fn)
