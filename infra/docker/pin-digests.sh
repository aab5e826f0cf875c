#!/usr/bin/env bash
# Compare the digests the Dockerfiles pin with those their tags point to now (needs a registry and `crane`,
# or `docker buildx`). Prints one line per base image; edit the Dockerfiles' pins from its output.
set -euo pipefail
cd "$(dirname "$0")"
grep -hoE '[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}' Dockerfile.* | sort -u | while read -r ref; do
  tag=${ref%@*}
  pinned=${ref#*@}
  if command -v crane >/dev/null; then
    now=$(crane digest "$tag")
  else
    now=$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest.Digest}}' | tr -d '"')
  fi
  if [ "$now" = "$pinned" ]; then echo "pinned   $tag"; else echo "moved    $tag: $pinned -> $now"; fi
done
