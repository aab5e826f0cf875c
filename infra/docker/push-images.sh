#!/usr/bin/env bash
# Build both images, push them to REGISTRY, and pin every manifest's embedrank image to the digest the registry
# returned (infra/docker/pin_images.py), so that each pod runs exactly the image that was built:
#   infra/docker/push-images.sh registry.example.com/ml
#   infra/docker/push-images.sh registry.example.com/ml --build-arg FLASH_ATTN_WHEEL_URL=... \
#     --build-arg FLASH_ATTN_WHEEL_SHA256=...          (further arguments go to the GPU image's build)
# Needs docker buildx and a login to REGISTRY. Commit the pinned manifests: they name what runs.
set -euo pipefail
registry=${1:?usage: infra/docker/push-images.sh REGISTRY [GPU build args...] (e.g. registry.example.com/ml)}
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -n 1)
meta=$(mktemp -d)
trap 'rm -rf "$meta"' EXIT
build() {  # kind, extra args...
  local kind=$1
  shift
  docker buildx build --platform linux/amd64 --push --metadata-file "$meta/$kind.json" \
    -f "$root/infra/docker/Dockerfile.$kind" -t "$registry/embedrank-$kind:$version" "$@" "$root"
}
digest() {  # kind: the pushed image's digest, from buildx's metadata file
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["containerimage.digest"])' "$meta/$1.json"
}
build cpu
build gpu "$@"
python3 "$root/infra/docker/pin_images.py" --registry "$registry" --version "$version" \
  --cpu "$(digest cpu)" --gpu "$(digest gpu)" --root "$root"
