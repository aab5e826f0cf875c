"""The `embedrank` command line: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import sys


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="local directory, Hugging Face id or s3:// prefix (default: Qwen/Qwen3-Embedding-0.6B, "
                        "or the built-in random-weight test model when that cannot be fetched)")
    p.add_argument("--revision", default=None, help="pin a hub revision (commit hash or tag)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--attention", default=None,
                   help="flash_attn, torch_varlen, sdpa_packed or sdpa_padded (default: best available)")
    p.add_argument("--max-length", type=int, default=8192)


def _cmd_verify(args) -> int:
    from .checkpoints import CheckpointError, resolve_model_or_builtin
    from .verify import verify

    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        source = resolve_model_or_builtin(args.model, log=log)
        result = verify(source, sample=args.sample, device=args.device, dtype=args.dtype,
                        attention=args.attention, max_length=args.max_length, revision=args.revision,
                        dim=args.dim)
    except (CheckpointError, ValueError) as exc:
        log(f"embedrank verify: {exc}")
        return 2
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0 if result.passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedrank", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    verify = sub.add_parser("verify", help="compare the fast path with the published recipe on a sample")
    _add_model_args(verify)
    verify.add_argument("--sample", type=int, default=64, help="number of sample documents (default 64)")
    verify.add_argument("--dim", type=int, default=None, help="Matryoshka dimension to compare at")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
