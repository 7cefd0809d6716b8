#!/usr/bin/env bash
# Builds the RPM packages tcpstall-agent and tcpstall-collector (RHEL 8, 9
# and their kin) from the binaries cargo built, with the same units,
# configs, user and capabilities as the Debian packages (packages.sh is
# the one description both read).
#
#   packaging/build-rpm.sh [--bin-dir DIR] [--out DIR] [--compress xz|zstd|none]
#
# For RHEL 8's glibc 2.28, build the binaries against it first:
#   cargo zigbuild --release --target x86_64-unknown-linux-gnu.2.28 --bins
#   packaging/build-rpm.sh --bin-dir target/x86_64-unknown-linux-gnu/release
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=packaging/packages.sh
. packaging/packages.sh

bin=${CARGO_TARGET_DIR:-target}/release
out=target/rpm
compress=zstd
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --compress) compress="$2"; shift 2 ;;
    *) echo "build-rpm.sh: unknown argument $1 (--bin-dir DIR, --out DIR, --compress xz|zstd|none)" >&2; exit 2 ;;
  esac
done
case "$compress" in
  xz) payload=w6.xzdio ;;
  zstd) payload=w19.zstdio ;;
  none) payload=w.ufdio ;;
  *) echo "build-rpm.sh: --compress xz, zstd or none, not $compress" >&2; exit 2 ;;
esac
command -v rpmbuild >/dev/null || { echo "build-rpm.sh: needs rpmbuild (Debian: apt-get install rpm)" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
arch=$(uname -m)

for entry in "${packages[@]}"; do
  IFS='|' read -r name binary description <<<"$entry"
  config=$(config_for "$name" "$stage")
  root="$stage/$name/root"
  stage_files "$root" usr/lib/systemd/system "$name" "$binary" "$config" "$bin"
  short=${name#tcpstall-}
  spec="$stage/$name/$name.spec"
  cat > "$spec" <<SPEC
Name: $name
Version: $version
Release: 1
Summary: $description
License: see README.md
URL: $homepage
Packager: $maintainer
BuildArch: $arch
# Built against glibc 2.28 (RHEL 8) and later.
Requires: glibc >= 2.28
Requires(pre): shadow-utils
Requires(post): systemd
Requires(preun): systemd
Requires(postun): systemd
AutoReqProv: no

%description
$summary_long

%install
mkdir -p %{buildroot}
cp -a $root/. %{buildroot}/

%pre
getent group $service_user >/dev/null || groupadd --system $service_user
getent passwd $service_user >/dev/null || \\
  useradd --system --gid $service_user --home-dir $service_home --no-create-home \\
    --shell /sbin/nologin --comment "tcpstall" $service_user
exit 0

%post
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi

%preun
if [ \$1 -eq 0 ] && [ -d /run/systemd/system ]; then
  systemctl stop $name.service >/dev/null 2>&1 || :
fi

%postun
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi

%files
%attr(0755,root,root) /usr/bin/$binary
%attr(0644,root,root) /usr/lib/systemd/system/$name.service
%dir %attr(0755,root,root) /etc/tcpstall
%config(noreplace) %attr(0640,root,$service_user) /etc/tcpstall/$short.toml
%doc /usr/share/doc/$name/README.md
SPEC
  rpmbuild -bb --quiet \
    --define "_topdir $stage/$name/rpmbuild" \
    --define "_rpmdir $out" \
    --define "_build_id_links none" \
    --define "__strip /bin/true" \
    --define "debug_package %{nil}" \
    --define "_binary_payload $payload" \
    "$spec" >/dev/null
  echo "$out/$arch/$name-$version-1.$arch.rpm"
done
