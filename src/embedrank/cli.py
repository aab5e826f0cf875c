"""The `embedrank` command line: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import first_line, user_error_in


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="local directory, Hugging Face id or s3:// prefix (default: Qwen/Qwen3-Embedding-0.6B, "
        "or the built-in random-weight test model when that cannot be fetched)",
    )
    p.add_argument("--revision", default=None, help="pin a hub revision (commit hash or tag)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--attention",
        default=None,
        help="flash_attn, torch_varlen, sdpa_packed or sdpa_padded (default: best available)",
    )
    p.add_argument("--max-length", type=int, default=8192)


def _cmd_verify(args) -> int:
    from .models.checkpoints import resolve_model_or_builtin
    from .verify import verify

    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        source = resolve_model_or_builtin(args.model, log=log)
        result = verify(
            source,
            sample=args.sample,
            device=args.device,
            dtype=args.dtype,
            attention=args.attention,
            max_length=args.max_length,
            revision=args.revision,
            dim=args.dim,
            log=log,
        )
    except ValueError as exc:  # CheckpointError and ConfigError among them
        log(f"embedrank verify: {exc}")
        return 2
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0 if result.passed else 1


def _overrides(args) -> list[str]:
    """The command's flags as config overrides, after its --set ones."""
    from .registry import JOBS

    overrides = list(args.set or [])
    for flag in JOBS[args.command].flags if args.command in JOBS else ():
        value = getattr(args, _dest(flag.flag), None)
        if flag.boolean and value:
            overrides.append(f"{flag.key}=true")
        elif not flag.boolean and value is not None:
            overrides.append(f"{flag.key}={value}")
    if getattr(args, "verbose", False):
        overrides.append("ray.verbose=true")
    return overrides


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def job_config_of(args):
    """The checked config of a parsed job command (its YAML, --set and flags), as the job would run it."""
    from .api import job_config
    from .registry import JOBS

    return job_config(args.config, _overrides(args), JOBS[args.command].config)


def _cmd_job(args) -> int:
    from . import api

    return _run_job(
        args.command, lambda log: api.run(args.command, args.config, _overrides(args), log=log, dry_run=args.dry_run)
    )


def _cmd_run(args) -> int:
    from .combined import run_combined
    from .config import load_config
    from .registry import CombinedJobConfig
    from .settings import with_absolute_paths

    def run(log):
        cfg = load_config(args.config, list(args.set or []), cls=CombinedJobConfig)
        return _Reports(run_combined(with_absolute_paths(cfg), log=log))

    return _run_job("run", run)


def _cmd_export(args) -> int:
    from .api import job_config
    from .export.config import ExportConfig

    overrides = list(args.set or [])
    for flag, key in (("input", "input.uri"), ("to", "to"), ("index", "index")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")

    def run(log):
        from .export.run import run_export
        from .runtime.cluster import data_context, init_ray

        cfg = job_config(args.config, overrides, ExportConfig)
        init_ray(cfg)
        with data_context(cfg.ray.verbose):  # Ray Data's INFO lines and progress output only with --verbose
            return run_export(
                cfg.input.uri,
                cfg.to,
                index=None if cfg.index == "none" else cfg.index,
                index_params=cfg.index_params(),
                vector_column=cfg.vector_column,
                metric=cfg.metric,
                rows_per_batch=cfg.rows_per_batch,
                storage_config=cfg.storage,
                log=lambda _: None,  # its one line, the summary, is printed by _run_job
            )

    return _run_job("export", run)


def _cmd_config(args) -> int:
    from .api import job_config
    from .export.config import ExportConfig
    from .registry import JOBS, CombinedJobConfig
    from .settings import describe

    cls = {"run": CombinedJobConfig, "export": ExportConfig}.get(args.job) or JOBS[args.job].config
    return _run_job("config", lambda log: _Text(describe(job_config(args.config, list(args.set or []), cls))))


class _Text:
    """Printed output of a command that runs no job."""

    outputs: list = []

    def __init__(self, text: str):
        self.text = text

    def summary(self) -> str:
        return self.text


class _Reports:
    """Several job reports printed one after the other."""

    def __init__(self, reports: dict):
        self.reports = reports
        self.outputs = [r.output for r in reports.values()]

    def summary(self) -> str:
        return "\n".join(r.summary() for r in self.reports.values())


def _run_job(name: str, run) -> int:
    log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        report = run(log)
    except Exception as exc:
        error = user_error_in(exc)
        if error is None:
            raise
        # Ray first: its shutdown can still forward lines from its own processes (a kill racing the exit), and
        # the line meant for the user is the last one.
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            from .runtime.cluster import shutdown_ray

            shutdown_ray()
        print(f"embedrank {name}: error: {first_line(error)}", file=sys.stderr, flush=True)
        return 2
    print(report.summary(), flush=True)
    for output in getattr(report, "outputs", []):  # the job outputs a command wrote (export: none of its own)
        print(f"output: {output} (report: {output.rstrip('/')}/_embedrank/report.json)", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="embedrank", description=__doc__)
    parser.add_argument("--version", action="version", version=f"embedrank {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    verify = sub.add_parser("verify", help="compare the fast path with the published recipe on a sample")
    _add_model_args(verify)
    verify.add_argument("--sample", type=int, default=64, help="number of sample documents (default 64)")
    verify.add_argument("--dim", type=int, default=None, help="Matryoshka dimension to compare at")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_cmd_verify)

    from .registry import JOBS

    for name, spec in JOBS.items():
        job = sub.add_parser(name, help=spec.help)
        job.add_argument("--config", required=True, help=spec.config_help)
        for flag in spec.flags:
            if flag.boolean:
                job.add_argument(flag.flag, action="store_true", help=flag.help)
            else:
                job.add_argument(flag.flag, default=None, help=flag.help)
        job.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, repeatable")
        job.add_argument(
            "--dry-run",
            action="store_true",
            help="print the plan (shards to do, committed, work units) and exit: no model, no write",
        )
        job.add_argument(
            "-v", "--verbose", action="store_true", help="also show Ray's own INFO logs and Ray Data's progress bars"
        )
        job.set_defaults(func=_cmd_job)

    both = sub.add_parser("run", help="run the job sections of one config (embed_job, rerank_job, ...) in one Ray job")
    both.add_argument(
        "--config",
        required=True,
        help="YAML with job sections: " + ", ".join(name for spec in JOBS.values() for name, _ in spec.sections),
    )
    both.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, repeatable")
    both.set_defaults(func=_cmd_run)

    export = sub.add_parser(
        "export", help="load the committed vectors of an embed output or nightly root into LanceDB or Lance"
    )
    export.add_argument("--input", default=None, help="the embed job's output, or a nightly root")
    export.add_argument("--to", default=None, help="lancedb://DIR/TABLE or lance://URI")
    export.add_argument("--index", default=None, choices=["none", "ivf_pq", "hnsw"], help="ANN index after the load")
    export.add_argument("--config", default=None, help="YAML with the export keys (embedrank config --job export)")
    export.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any export key, repeatable")
    export.set_defaults(func=_cmd_export)

    config = sub.add_parser("config", help="print the effective config (YAML + --set) with every key and its meaning")
    config.add_argument("--config", required=True, help="YAML job config")
    config.add_argument(
        "--job",
        default="embed",
        choices=[*JOBS, "run", "export"],
        help="which job's config (default embed)",
    )
    config.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, repeatable")
    config.set_defaults(func=_cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .runtime.interrupts import Interrupted, interruptible
    from .runtime.quiet import harmless_stderr_lines_hidden

    args = build_parser().parse_args(argv)
    with harmless_stderr_lines_hidden(enabled=not getattr(args, "verbose", False)):
        try:
            with interruptible():
                return args.func(args)
        except Interrupted as stop:  # Ctrl-C or SIGTERM: one line, never a traceback
            print(f"embedrank {args.command}: {stop.line()}", file=sys.stderr, flush=True)
            return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
