//! The Debian packages: built by packaging/build-deb.sh from the binaries
//! cargo built, with units that systemd accepts, least-privilege
//! capabilities, and default configs the binaries read.

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
