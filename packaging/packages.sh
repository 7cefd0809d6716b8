# The one description of tcpstall's packages, sourced by build-deb.sh and
# build-rpm.sh: what each package is, which files it installs where, and
# what its scripts do. Each format's builder only says it in its own words.

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
maintainer="tcpstall maintainers <tcpstall@example.invalid>"
homepage="https://example.invalid/tcpstall"
summary_long="tcpstall finds TCP connections whose send queue stays stuck, joins both
ends of each across hosts and says why: the peer is not reading, data or
ACKs are lost, the peer is gone (half-open), the sender is corked."

# The packages: name, binary, one-line description.
packages=(
  "tcpstall-agent|tcpstall-agent|tcpstall agent: reports this host's stuck TCP send queues"
  "tcpstall-collector|tcpstall-collector|tcpstall collector: joins, diagnoses and stores stuck TCP flows"
)

# The config each package installs at /etc/tcpstall/NAME.toml: the example,
# with the collector's database where the unit's StateDirectory puts it.
# $1 package, $2 a scratch directory; prints the file's path.
config_for() {
  case "$1" in
    tcpstall-agent) echo agent/agent.example.toml ;;
    tcpstall-collector)
      sed 's|^db = .*|db = "/var/lib/tcpstall/tcpstall.db"|' collector/collector.example.toml > "$2/collector.toml"
      echo "$2/collector.toml" ;;
  esac
}

# Lays a package's files out under $1 (a root), with the systemd unit in
# $2 (lib/systemd/system on Debian, usr/lib/systemd/system on RHEL).
# $3 package, $4 binary, $5 its config, $6 the binaries' directory.
stage_files() {
  local root=$1 unitdir=$2 name=$3 binary=$4 config=$5 bin=$6
  [ -x "$bin/$binary" ] || { echo "$0: $bin/$binary missing: cargo build --bins first" >&2; exit 1; }
  install -D -m 0755 "$bin/$binary" "$root/usr/bin/$binary"
  install -D -m 0644 "packaging/systemd/$name.service" "$root/$unitdir/$name.service"
  install -D -m 0640 "$config" "$root/etc/tcpstall/${name#tcpstall-}.toml"
  install -D -m 0644 README.md "$root/usr/share/doc/$name/README.md"
}

# The system user the services run as: its name, and its home (the
# collector's database directory).
service_user=tcpstall
service_home=/var/lib/tcpstall
