"""The whole jobs from Python, as the CLI runs them: a config object or a YAML path, plus `key=value` overrides.

    import embedrank
    report = embedrank.run_embed("configs/local.yaml", ["input.uri=data/in/", "model.dim=256"])
    report = embedrank.run_rerank(RerankJobConfig(...))            # a config object (embedrank.config)
    preview = embedrank.run_nightly("configs/nightly.yaml", dry_run=True)

Both forms pass the checks of `embedrank <job> --config X --set ...` (unknown keys, types, allowed values,
impossible combinations) before anything runs, and local paths are made absolute. A UserError raised anywhere
in the run, also inside a Ray task or actor, reaches the caller as its own class with its one-line message,
so `except embedrank.errors.UserError` catches every mistake a user can fix.
"""

from __future__ import annotations

import dataclasses
import os

import yaml

from .config import EmbedJobConfig, RerankJobConfig, RetrieveJobConfig, load_config, with_absolute_paths
from .errors import ConfigError, first_line, user_error_in


def job_config(config, overrides=(), cls=EmbedJobConfig):
    """A checked job config with absolute local paths.

    config: a `cls` object, the path of a YAML file, or None (the overrides alone); overrides: "key=value"
    strings as the CLI's --set takes them (values in YAML: `model.dim=256`, `input.passthrough=[lang]`).
    """
    overrides = [] if overrides is None else overrides
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"overrides must be a list of 'key=value' strings (like --set), got {overrides!r}")
    overrides = list(overrides)
    if config is None or isinstance(config, (str, os.PathLike)):
        cfg = load_config(config, overrides, cls=cls)
    elif isinstance(config, cls):
        cfg = load_config(None, config_overrides(config) + overrides, cls=cls)
    else:
        raise ConfigError(
            f"expected an embedrank.config.{cls.__name__} or the path of a YAML config, got {type(config).__name__}"
        )
    return with_absolute_paths(cfg)


def config_overrides(cfg, prefix: str = "") -> list[str]:
    """Every field of a config object as a "key=value" override, so that an object built in Python goes
    through exactly the checks a YAML file does (types, allowed values), not only the final validation."""
    items = []
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            items += config_overrides(value, f"{key}.")
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
            items.append(f"{key}={text}")
    return items


def _raising_user_errors(run):
    """run() with a UserError from inside Ray raised as its own class and one-line message (Ray's wrapper,
    holding the remote traceback, stays attached as the cause)."""
    try:
        return run()
    except Exception as exc:
        error = user_error_in(exc)
        if error is None or error is exc:
            raise
        raise type(error)(first_line(error)) from exc


def run_embed(config, overrides=(), *, log=print, dry_run: bool = False):
    """Run (or finish) an embed job; returns its RunReport (`dry_run`: the plan's preview, nothing changed)."""
    from .embed.job import run_embed as run

    cfg = job_config(config, overrides, EmbedJobConfig)
    return _raising_user_errors(lambda: run(cfg, log=log, dry_run=dry_run))


def run_nightly(config, overrides=(), *, log=print, dry_run: bool = False):
    """Publish tonight's version (or resume a killed night); returns its RunReport (`dry_run`: the preview)."""
    from .embed.nightly import run_nightly as run

    cfg = job_config(config, overrides, EmbedJobConfig)
    return _raising_user_errors(lambda: run(cfg, log=log, dry_run=dry_run))


def run_rerank(config, overrides=(), *, log=print, dry_run: bool = False):
    """Run (or finish) a rerank job; returns its RunReport (`dry_run`: the plan's preview, nothing changed)."""
    from .rerank.job import run_rerank as run

    cfg = job_config(config, overrides, RerankJobConfig)
    return _raising_user_errors(lambda: run(cfg, log=log, dry_run=dry_run))


def run_retrieve(config, overrides=(), *, log=print, dry_run: bool = False):
    """Run (or finish) a retrieve job; returns its RunReport (`dry_run`: the plan's preview, nothing changed)."""
    from .retrieve.job import run_retrieve as run

    cfg = job_config(config, overrides, RetrieveJobConfig)
    return _raising_user_errors(lambda: run(cfg, log=log, dry_run=dry_run))
