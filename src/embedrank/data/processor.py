"""A built processor: the two Ray Data stages of a job's model step, applied to a user's Dataset.

    user's Dataset -> tokenize (CPU tasks) -> model actor pool (token-budget micro-batches) -> user's Dataset

The same split as the jobs (runtime/cluster.py): tokenising never runs in the model actors. Calling a
processor only adds the two stages to the Dataset's plan; nothing runs until the Dataset is consumed.
"""

from __future__ import annotations

import json
import warnings

from ..errors import CheckpointError, ConfigError
from ..io.storage import storage_options
from ..models.checkpoints import BUILTIN_MODEL, BUILTIN_WARNING, check_qwen3, resolve_checkpoint
from ..runtime import cluster
from .columns import check_columns


def model_config_json(config, kind: str) -> dict:
    """The checkpoint's config.json, fetched with the tokenizer files only, after refusing a non-Qwen3 model:
    a wrong model_source is one line when the processor is built, not a dead actor later."""
    if config.model_source == BUILTIN_MODEL:
        warnings.warn(BUILTIN_WARNING, stacklevel=3)
    options = storage_options(config.storage)
    check_qwen3(config.model_source, revision=config.model.revision, storage_options=options, kind=kind)
    path = resolve_checkpoint(
        config.model_source, revision=config.model.revision, storage_options=options, kind=kind, tokenizer_only=True
    )
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise CheckpointError(
            f"{config.model_source}: config.json cannot be read; point model.source at a checkpoint's root"
        ) from None


class Processor:
    """`processor(ds)` -> ds with the processor's columns added (lazily). Built by build_embedder or
    build_reranker; `config` is the config it was built from."""

    def __init__(self, config, *, needs: dict[str, str], tokenize, actor):
        self.config = config
        self.needs = needs  # config field -> input column
        self._tokenize = tokenize
        self._actor = actor

    def __call__(self, ds):
        import ray.data

        if not isinstance(ds, ray.data.Dataset):
            raise TypeError(f"a processor takes a ray.data.Dataset, got {type(ds).__name__}")
        cfg = self.config
        name = type(cfg).__name__
        # Where Ray Data knows the schema without running anything (read_parquet, from_items, filter...), a
        # missing or clashing column is refused here; otherwise by the first tokenize task.
        names = known_columns(ds)
        if names is not None:
            check_columns(names, needs=self.needs, adds=cfg.added_columns(), config=name)
        opts = json.dumps(storage_options(cfg.storage))
        # The jobs' CPU stage: its memory request is also what keeps Ray Data from fusing it into the actors.
        ds = cluster.cpu_stage(
            ds,
            self._tokenize,
            num_cpus=cfg.prepare.num_cpus,
            memory=int((cfg.prepare.memory_mb or 768.0) * (1 << 20)),
            batch_size=cfg.prepare.batch_size,
            batch_format="pyarrow",
            fn_kwargs=dict(config=cfg, storage_opts=opts),
        )
        # Ray Data restarts a dead actor and retries its batch, as for any actor pool: the jobs' crash ledger
        # (rows named by their tokens here, columns.GuardedRows) stops a row that kills the actor every time.
        pool = cluster.with_gpus(cfg.pool, f"{name}.{cfg.POOL}", lambda line: warnings.warn(line, stacklevel=3))
        return ds.map_batches(
            self._actor,
            batch_size=pool.batch_size,
            batch_format="pyarrow",
            compute=actor_pool(pool.concurrency),
            num_gpus=pool.num_gpus,
            num_cpus=pool.num_cpus,
            **({"accelerator_type": pool.accelerator_type} if pool.accelerator_type else {}),
            fn_constructor_kwargs=dict(config=cfg, storage_opts=opts, ledger=cluster.crash_ledger()),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def known_columns(ds) -> list[str] | None:
    """The Dataset's column names when Ray Data knows them without running anything, else None."""
    import pyarrow as pa

    try:
        schema = ds.schema(fetch_if_missing=False)
    except pa.ArrowException:  # blocks whose types Ray cannot unify (e.g. from_items with mixed types)
        return None
    return None if schema is None else list(schema.names)


def actor_pool(concurrency):
    """ray.data.llm's `concurrency`: n is a fixed pool of n actors, (min, max) an autoscaling one."""
    import ray.data

    if isinstance(concurrency, int):
        return ray.data.ActorPoolStrategy(size=concurrency)
    low, high = concurrency
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high)


def check_config_type(config, expected, builder: str) -> None:
    if not isinstance(config, expected):
        raise ConfigError(f"{builder} takes an embedrank.data.{expected.__name__}, got {type(config).__name__}")
