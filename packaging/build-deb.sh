#!/usr/bin/env bash
# Builds the Debian packages tcpstall-agent and tcpstall-collector from the
# binaries cargo built, with their systemd units, default configs under
# /etc/tcpstall/ and the tcpstall system user (packages.sh describes them;
# build-rpm.sh builds the RPMs from the same description).
#
#   packaging/build-deb.sh [--profile release|debug] [--bin-dir DIR] [--out DIR]
#                          [--compress xz|gzip|none]
#
# Release packages: `cargo build --release --bins` first (the default
# profile). The tests build them from the debug binaries, to check the
# packaging itself quickly.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=packaging/packages.sh
. packaging/packages.sh

profile=release
bin=
out=target/debian
compress=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --bin-dir) bin="$2"; shift 2 ;;
    --compress) compress="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "build-deb.sh: unknown argument $1 (--profile release|debug, --bin-dir DIR, --out DIR, --compress xz|gzip|none)" >&2; exit 2 ;;
  esac
done
bin="${bin:-${CARGO_TARGET_DIR:-target}/$profile}"
arch=$(dpkg --print-architecture)
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# $1 package, $2 binary, $3 description, $4 config source
package() {
  local name=$1 binary=$2 description=$3 config=$4
  local root="$stage/$name"
  stage_files "$root" lib/systemd/system "$name" "$binary" "$config" "$bin"
  mkdir -p "$root/DEBIAN"
  echo "/etc/tcpstall/${name#tcpstall-}.toml" > "$root/DEBIAN/conffiles"
  local size
  size=$(du -sk "$root" | cut -f1)
  cat > "$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: adduser, libc6
Section: net
Priority: optional
Homepage: $homepage
Description: $description
$(sed 's/^/ /' <<<"$summary_long")
CONTROL
  cat > "$root/DEBIAN/postinst" <<POSTINST
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
  if ! getent passwd $service_user >/dev/null; then
    adduser --system --group --no-create-home --home $service_home $service_user
  fi
  chgrp $service_user /etc/tcpstall/*.toml 2>/dev/null || true
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
  fi
fi
POSTINST
  cat > "$root/DEBIAN/prerm" <<PRERM
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
  systemctl stop $name.service >/dev/null 2>&1 || true
fi
PRERM
  chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"
  fakeroot dpkg-deb -Z"$compress" --build --root-owner-group "$root" "$out/${name}_${version}_${arch}.deb" >/dev/null
  echo "$out/${name}_${version}_${arch}.deb"
}

for entry in "${packages[@]}"; do
  IFS='|' read -r name binary description <<<"$entry"
  package "$name" "$binary" "$description" "$(config_for "$name" "$stage")"
done
