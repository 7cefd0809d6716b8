#!/usr/bin/env bash
# Builds tcpstall-agent and tcpstall-collector images from the release
# binaries: deploy/container/build.sh [VERSION] (with buildah, or podman).
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
cargo build --release -p tcpstall-agent -p tcpstall-collector
tool=$(command -v buildah || command -v podman || { echo "build.sh: needs buildah or podman" >&2; exit 1; })
for part in agent collector; do
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  cp "target/release/tcpstall-$part" deploy/container/Containerfile.$part "$ctx/"
  if [ "$(basename "$tool")" = buildah ]; then
    buildah bud -f "$ctx/Containerfile.$part" -t "tcpstall-$part:$version" "$ctx"
  else
    podman build -f "$ctx/Containerfile.$part" -t "tcpstall-$part:$version" "$ctx"
  fi
  rm -rf "$ctx"
  trap - EXIT
done
