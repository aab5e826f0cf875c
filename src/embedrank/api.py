"""The whole jobs from Python, as the CLI runs them: a config object or a YAML path, plus `key=value` overrides.

    import embedrank
    report = embedrank.run_embed("configs/local.yaml", ["input.uri=data/in/", "model.dim=256"])
    report = embedrank.run_rerank(RerankJobConfig(...))            # a config object (embedrank.config)
    preview = embedrank.run_nightly("configs/nightly.yaml", dry_run=True)

There is one `run_<name>` per job of the registry (registry.py). Both forms pass the checks of
`embedrank <job> --config X --set ...` (unknown keys, types, allowed values, impossible combinations) before
anything runs, and local paths are made absolute. A UserError raised anywhere in the run, also inside a Ray
task or actor, reaches the caller as its own class with its one-line message, so
`except embedrank.errors.UserError` catches every mistake a user can fix.
"""

from __future__ import annotations

import os

from .config import load_config, read_yaml
from .errors import ConfigError, first_line, user_error_in
from .registry import JOBS
from .settings import load, with_absolute_paths


def job_config(config, overrides=(), cls=None):
    """A checked job config with absolute local paths (`cls`: the config class, default the embed job's).

    config: a `cls` object, the path of a YAML file, or None (the overrides alone); overrides: "key=value"
    strings as the CLI's --set takes them (values in YAML: `model.dim=256`, `input.passthrough=[lang]`).
    """
    cls = cls or JOBS["embed"].config
    overrides = [] if overrides is None else overrides
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"overrides must be a list of 'key=value' strings (like --set), got {overrides!r}")
    if config is None or isinstance(config, (str, os.PathLike)):
        cfg = load_config(config, list(overrides), cls=cls)
    elif isinstance(config, cls):
        # The object was checked when it was made; overrides go through the same checks as YAML's.
        cfg = load(cls, _merged(config.model_dump(), read_yaml(None, list(overrides)))) if overrides else config
    else:
        raise ConfigError(
            f"expected an embedrank.config.{cls.__name__} or the path of a YAML config, got {type(config).__name__}"
        )
    return with_absolute_paths(cfg)


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for name, value in changes.items():
        out[name] = _merged(out[name], value) if isinstance(value, dict) and isinstance(out.get(name), dict) else value
    return out


def raising_user_errors(run):
    """run() with a UserError from inside Ray raised as its own class and one-line message (Ray's wrapper,
    holding the remote traceback, stays attached as the cause)."""
    try:
        return run()
    except Exception as exc:
        error = user_error_in(exc)
        if error is None or error is exc:
            raise
        raise type(error)(first_line(error)) from exc


def run(name: str, config, overrides=(), *, log=print, dry_run: bool = False):
    """Run (or finish) the job `name` of the registry; returns its RunReport (`dry_run`: the plan's preview,
    nothing changed). Safe to rerun: committed shards are skipped."""
    from .runtime.job import preview_job, run_job

    spec = JOBS[name]
    cfg = job_config(config, overrides, spec.config)

    def go():
        job = spec.job_class()(cfg, log)
        return preview_job(job) if dry_run else run_job(job)

    return raising_user_errors(go)


def _runner(name: str):
    def run_named(config, overrides=(), *, log=print, dry_run: bool = False):
        return run(name, config, overrides, log=log, dry_run=dry_run)

    run_named.__name__ = run_named.__qualname__ = f"run_{name}"
    run_named.__doc__ = f"{JOBS[name].help[0].upper()}{JOBS[name].help[1:]}: `embedrank {name}` from Python. " + (
        "Returns its RunReport (`dry_run`: the plan's preview, nothing changed)."
    )
    return run_named


# embedrank.run_embed, run_nightly, run_retrieve, run_rerank, ...: one per registered job.
globals().update({f"run_{name}": _runner(name) for name in JOBS})
