"""Point every manifest's embedrank image at the digest a push returned: REGISTRY/embedrank-KIND:VERSION@sha256:...

    python3 infra/docker/pin_images.py --registry registry.example.com/ml --version 0.1.0 \
        --cpu sha256:<digest> --gpu sha256:<digest>

infra/docker/push-images.sh builds and pushes both images and then runs this with the digests the registry
returned. It rewrites the `image:` / `worker_image:` lines of infra/kuberay/*.yaml and
infra/cluster-launcher/*.yaml in place, comments and layout kept, so that every image a pod runs is pinned by
digest (tests/unit/test_images.py checks the result). Standard library only: it runs with any python3.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ("infra/kuberay", "infra/cluster-launcher")
LINE = re.compile(
    r"^(?P<lead>\s*(?:-\s+)?(?:image|head_image|worker_image):\s*)(?P<q>[\"']?)"
    r"(?P<ref>[^\s\"'#]*embedrank-(?P<kind>cpu|gpu)(?::[\w.-]+)?(?:@sha256:[0-9a-f]{64})?)(?P=q)",
    re.MULTILINE,
)
REGISTRY = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def pin(text: str, registry: str, version: str, digests: dict[str, str]) -> tuple[str, int]:
    """`text` with each embedrank image line pinned, and how many lines were rewritten."""

    def repl(m: re.Match) -> str:
        ref = f"{registry}/embedrank-{m['kind']}:{version}@{digests[m['kind']]}"
        return f"{m['lead']}{m['q']}{ref}{m['q']}"

    return LINE.subn(repl, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True, help="where the images were pushed, e.g. registry.example.com/ml")
    parser.add_argument("--version", required=True, help="the image tag (the package version)")
    parser.add_argument("--cpu", required=True, help="digest of embedrank-cpu (sha256:...)")
    parser.add_argument("--gpu", required=True, help="digest of embedrank-gpu (sha256:...)")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    registry = args.registry.rstrip("/")
    if not REGISTRY.fullmatch(registry):
        print(f"--registry {args.registry!r} is not a registry path: lower case, e.g. registry.example.com/ml")
        return 2
    if not re.fullmatch(r"[\w][\w.-]{0,127}", args.version):
        print(f"--version {args.version!r} is not an image tag: letters, digits, '.', '_' and '-'")
        return 2
    digests = {"cpu": args.cpu, "gpu": args.gpu}
    for kind, digest in digests.items():
        if not DIGEST.fullmatch(digest):
            print(f"--{kind} {digest!r} is not a digest: sha256: and 64 hex digits, as the registry returned it")
            return 2
    total = 0
    for folder in MANIFESTS:
        for path in sorted((args.root / folder).glob("*.yaml")):
            text, count = pin(path.read_text(), registry, args.version, digests)
            if count:
                path.write_text(text)
                print(f"pinned {count} image(s) in {path.relative_to(args.root)}")
                total += count
    if not total:
        print(f"no embedrank image line found under {', '.join(MANIFESTS)} of {args.root}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
