//! The Debian and RPM packages: built by packaging/build-deb.sh and
//! build-rpm.sh (from one description, packaging/packages.sh) from the
//! binaries cargo built, with units that systemd accepts, least-privilege
//! capabilities, and default configs the binaries read; and the binaries
//! built for RHEL 8 (glibc 2.28) need nothing newer.

use std::path::{Path, PathBuf};
use std::process::Command;

use tcpstall_tests::binary;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The configs installed under `root` are read by the binaries installed
/// beside them, the collector's database where its unit keeps it.
fn configs_read_by_their_binaries(root: &Path) {
    let collector_cfg = run(Command::new(root.join("usr/bin/tcpstall-collector"))
        .arg("--config")
        .arg(root.join("etc/tcpstall/collector.toml"))
        .arg("print-config"));
    assert!(
        collector_cfg.contains("db = \"/var/lib/tcpstall/tcpstall.db\""),
        "{collector_cfg}"
    );
    run(Command::new(root.join("usr/bin/tcpstall-agent"))
        .arg("print-config")
        .arg("--config")
        .arg(root.join("etc/tcpstall/agent.toml")));
}

/// A unit's values of `key`, space-joined.
fn directive(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

#[test]
fn debian_packages_build_with_verified_units_and_readable_configs() {
    if !have("dpkg-deb") || !have("fakeroot") {
        eprintln!("skipped: needs dpkg-deb and fakeroot (.ci/run installs them)");
        return;
    }
    let out = tempfile::tempdir().expect("temp dir");
    let bin_dir = binary("tcpstall-agent")
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let built = run(Command::new(repo().join("packaging/build-deb.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out.path())
        .args(["--compress", "none"]));
    let debs: Vec<&str> = built.lines().collect();
    assert_eq!(debs.len(), 2, "{built}");
    let root = out.path().join("root");
    for (deb, name) in debs.iter().zip(["tcpstall-agent", "tcpstall-collector"]) {
        assert!(deb.contains(name), "{deb}");
        let field = |f: &str| run(Command::new("dpkg-deb").args(["--field", deb, f]));
        assert_eq!(field("Package").trim(), name);
        assert_eq!(field("Version").trim(), env!("CARGO_PKG_VERSION"));
        assert!(field("Depends").contains("adduser"));
        let contents = run(Command::new("dpkg-deb").args(["--contents", deb]));
        let config = format!("./etc/tcpstall/{}.toml", &name["tcpstall-".len()..]);
        for path in [
            format!("./usr/bin/{name}"),
            format!("./lib/systemd/system/{name}.service"),
            config.clone(),
        ] {
            assert!(contents.contains(&path), "{name} lacks {path}:\n{contents}");
        }
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
        let control = out.path().join(format!("{name}.control"));
        run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
        let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
        assert_eq!(
            conffiles.trim(),
            &config[1..],
            "the config survives upgrades"
        );
        let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
        assert!(postinst.contains("adduser --system"), "{postinst}");
    }

    // The packaged configs are read by the packaged binaries.
    configs_read_by_their_binaries(&root);

    // Least privilege, as documented.
    let unit = |name: &str| {
        std::fs::read_to_string(root.join(format!("lib/systemd/system/{name}.service")))
            .expect("unit")
    };
    let agent = unit("tcpstall-agent");
    let collector = unit("tcpstall-collector");
    assert_eq!(
        directive(&agent, "AmbientCapabilities").as_deref(),
        Some("CAP_BPF CAP_PERFMON CAP_SYS_PTRACE CAP_NET_ADMIN")
    );
    assert_eq!(
        directive(&agent, "CapabilityBoundingSet").as_deref(),
        Some("CAP_BPF CAP_PERFMON CAP_SYS_PTRACE CAP_NET_ADMIN")
    );
    assert_eq!(
        directive(&collector, "CapabilityBoundingSet").as_deref(),
        Some("")
    );
    for u in [&agent, &collector] {
        assert_eq!(directive(u, "User").as_deref(), Some("tcpstall"));
        for (k, v) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
        ] {
            assert_eq!(directive(u, k).as_deref(), Some(v), "{k}");
        }
    }

    // systemd accepts them, without a single warning.
    if !have("systemd-analyze") {
        eprintln!("systemd-analyze not here: units not verified");
        return;
    }
    for name in ["tcpstall-agent", "tcpstall-collector"] {
        // ExecStart pointed at the extracted binary: verify checks it runs.
        let text = unit(name).replace("/usr/bin/", &format!("{}/usr/bin/", root.display()));
        let path = out.path().join(format!("{name}.service"));
        std::fs::write(&path, text).expect("write unit");
        verify(&path);
    }
}

fn verify(unit: &Path) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "{}: {err}",
        unit.display()
    );
}

/// Where the debug binaries are, as the tests run them.
fn bin_dir() -> PathBuf {
    binary("tcpstall-agent")
        .parent()
        .expect("binary directory")
        .to_path_buf()
}

#[test]
fn rpm_packages_build_and_install_into_a_scratch_root_with_the_debian_packages_files() {
    if !have("rpmbuild") || !have("dpkg-deb") || !have("fakeroot") {
        eprintln!(
            "skipped: needs rpmbuild (Debian: rpm), dpkg-deb and fakeroot (.ci/run installs them)"
        );
        return;
    }
    let out = tempfile::tempdir().expect("temp dir");
    let built = run(Command::new(repo().join("packaging/build-rpm.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out.path())
        .args(["--compress", "none"]));
    let rpms: Vec<&str> = built.lines().collect();
    assert_eq!(rpms.len(), 2, "{built}");
    let version = env!("CARGO_PKG_VERSION");
    let query = |rpm: &str, args: &[&str]| run(Command::new("rpm").arg("-qp").args(args).arg(rpm));
    for (rpm, name) in rpms.iter().zip(["tcpstall-agent", "tcpstall-collector"]) {
        let short = &name["tcpstall-".len()..];
        assert_eq!(
            query(rpm, &["--queryformat", "%{NAME} %{VERSION}-%{RELEASE}"]),
            format!("{name} {version}-1")
        );
        let requires = query(rpm, &["--requires"]);
        for want in ["glibc >= 2.28", "shadow-utils", "systemd"] {
            assert!(
                requires.lines().any(|l| l == want),
                "{name} lacks {want}:\n{requires}"
            );
        }
        // Exactly the files the Debian package has (the unit where RHEL
        // keeps them), with their modes and owners.
        let files = query(
            rpm,
            &["--queryformat", "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]"],
        );
        let mut want = [
            "drwxr-xr-x root:root  /etc/tcpstall".to_string(),
            format!("-rw-r----- root:tcpstall cn /etc/tcpstall/{short}.toml"),
            format!("-rwxr-xr-x root:root  /usr/bin/{name}"),
            format!("-rw-r--r-- root:root  /usr/lib/systemd/system/{name}.service"),
            format!("-rw-r--r-- root:root d /usr/share/doc/{name}/README.md"),
        ];
        let mut have: Vec<&str> = files.lines().collect();
        have.sort_unstable();
        want.sort_unstable();
        assert_eq!(have, want, "{name}'s files");
        let scripts = query(rpm, &["--scripts"]);
        assert!(
            scripts.contains("useradd --system --gid tcpstall"),
            "{scripts}"
        );
        assert!(
            scripts.contains(&format!("systemctl stop {name}.service")),
            "{scripts}"
        );
    }

    // Installed into a scratch root (no dependencies there, no scripts:
    // they would create a user on this machine).
    let root = out.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    run(Command::new("rpm").arg("--root").arg(&root).arg("--initdb"));
    run(Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args(["-i", "--nodeps", "--noscripts"])
        .args(&rpms));
    let installed = run(Command::new("rpm").arg("--root").arg(&root).args([
        "-qa",
        "--queryformat",
        "%{NAME}\n",
    ]));
    let mut installed: Vec<&str> = installed.lines().collect();
    installed.sort_unstable();
    assert_eq!(installed, ["tcpstall-agent", "tcpstall-collector"]);
    for name in ["tcpstall-agent", "tcpstall-collector"] {
        let unit = std::fs::read(root.join(format!("usr/lib/systemd/system/{name}.service")))
            .expect("unit");
        let source = std::fs::read(repo().join(format!("packaging/systemd/{name}.service")))
            .expect("source");
        assert!(unit == source, "{name}'s unit is not the Debian package's");
    }
    configs_read_by_their_binaries(&root);
}

/// The binaries built for RHEL 8 (`.ci/run`: `cargo zigbuild --target
/// x86_64-unknown-linux-gnu.2.28 --target-dir target/glibc-2.28`), or
/// `TCPSTALL_GLIBC_228_DIR`.
fn rhel8_bin_dir() -> PathBuf {
    std::env::var_os("TCPSTALL_GLIBC_228_DIR").map_or_else(
        || repo().join("target/glibc-2.28/x86_64-unknown-linux-gnu/debug"),
        PathBuf::from,
    )
}

/// The glibc symbol versions a binary needs, as `objdump -T` lists them.
fn glibc_versions(binary: &Path) -> Vec<(u32, u32, u32)> {
    let dump = run(Command::new("objdump").arg("-T").arg(binary));
    let mut out: Vec<(u32, u32, u32)> = dump
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let v: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut n = v
                .trim_end_matches('.')
                .split('.')
                .map(|p| p.parse::<u32>().ok());
            Some((n.next()??, n.next()??, n.next().flatten().unwrap_or(0)))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[test]
fn binaries_built_for_rhel_8_need_no_glibc_above_2_28_and_package() {
    let dir = rhel8_bin_dir();
    if !dir.join("tcpstall-agent").exists() {
        eprintln!(
            "skipped: no binaries for glibc 2.28 in {} (.ci/run builds them: cargo zigbuild \
             --target x86_64-unknown-linux-gnu.2.28 --bins -p tcpstall-agent -p tcpstall-collector \
             --target-dir target/glibc-2.28)",
            dir.display()
        );
        return;
    }
    for name in ["tcpstall-agent", "tcpstall-collector"] {
        let versions = glibc_versions(&dir.join(name));
        // Linked against glibc (a static binary would pass for nothing).
        assert!(versions.len() >= 3, "{name}: {versions:?}");
        let highest = versions.last().copied().unwrap_or_default();
        assert!(
            highest <= (2, 28, 0),
            "{name} needs GLIBC_{}.{}: {versions:?}",
            highest.0,
            highest.1
        );
        // And runs (this machine's glibc is newer).
        let v = run(Command::new(dir.join(name)).arg("--version"));
        assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
    }
    if !have("rpmbuild") {
        return;
    }
    let out = tempfile::tempdir().expect("temp dir");
    let built = run(Command::new(repo().join("packaging/build-rpm.sh"))
        .arg("--bin-dir")
        .arg(&dir)
        .arg("--out")
        .arg(out.path())
        .args(["--compress", "none"]));
    assert_eq!(built.lines().count(), 2, "{built}");
}
