#!/usr/bin/env bash
# Builds the Debian packages tcpstall-agent and tcpstall-collector from the
# binaries cargo built, with their systemd units, default configs under
# /etc/tcpstall/ and the tcpstall system user.
#
#   packaging/build-deb.sh [--profile release|debug] [--bin-dir DIR] [--out DIR]
#                          [--compress xz|gzip|none]
#
# Release packages: `cargo build --release --bins` first (the default
# profile). The tests build them from the debug binaries, to check the
# packaging itself quickly.
set -euo pipefail
cd "$(dirname "$0")/.."

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
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# $1 package, $2 binary, $3 description, $4 config source
package() {
  local name=$1 binary=$2 description=$3 config=$4
  local root="$stage/$name"
  [ -x "$bin/$binary" ] || { echo "build-deb.sh: $bin/$binary missing: cargo build --bins first" >&2; exit 1; }
  install -D -m 0755 "$bin/$binary" "$root/usr/bin/$binary"
  install -D -m 0644 "packaging/systemd/$name.service" "$root/lib/systemd/system/$name.service"
  install -D -m 0640 "$config" "$root/etc/tcpstall/${name#tcpstall-}.toml"
  install -D -m 0644 README.md "$root/usr/share/doc/$name/README.md"
  mkdir -p "$root/DEBIAN"
  echo "/etc/tcpstall/${name#tcpstall-}.toml" > "$root/DEBIAN/conffiles"
  local size
  size=$(du -sk "$root" | cut -f1)
  cat > "$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: tcpstall maintainers <tcpstall@example.invalid>
Installed-Size: $size
Depends: adduser, libc6
Section: net
Priority: optional
Homepage: https://example.invalid/tcpstall
Description: $description
 tcpstall finds TCP connections whose send queue stays stuck, joins both
 ends of each across hosts and says why: the peer is not reading, data or
 ACKs are lost, the peer is gone (half-open), the sender is corked.
CONTROL
  cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd tcpstall >/dev/null; then
    adduser --system --group --no-create-home --home /var/lib/tcpstall tcpstall
  fi
  chgrp tcpstall /etc/tcpstall/*.toml 2>/dev/null || true
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

collector_config="$stage/collector.toml"
sed 's|^db = .*|db = "/var/lib/tcpstall/tcpstall.db"|' collector/collector.example.toml > "$collector_config"
package tcpstall-agent tcpstall-agent \
  "tcpstall agent: reports this host's stuck TCP send queues" agent/agent.example.toml
package tcpstall-collector tcpstall-collector \
  "tcpstall collector: joins, diagnoses and stores stuck TCP flows" "$collector_config"
