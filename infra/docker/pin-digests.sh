#!/usr/bin/env bash
# Compare the digests that the Dockerfiles and manifests pin (base images, the nightly CronJob's kubectl) with
# those their tags point to now (needs a registry and `crane`, or `docker buildx`). Prints one line per image;
# edit the pins from its output. embedrank's own images are pinned by push-images.sh when they are pushed.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -hoE '[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}' docker/Dockerfile.* kuberay/*.yaml cluster-launcher/*.yaml \
  | sort -u | while read -r ref; do
  tag=${ref%@*}
  pinned=${ref#*@}
  if command -v crane >/dev/null; then
    now=$(crane digest "$tag")
  else
    now=$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest.Digest}}' | tr -d '"')
  fi
  if [ "$now" = "$pinned" ]; then echo "pinned   $tag"; else echo "moved    $tag: $pinned -> $now"; fi
done
