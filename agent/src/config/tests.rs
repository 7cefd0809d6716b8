//! Unit tests of `config`.

use super::*;

#[test]
fn example_file_is_the_generated_defaults() {
    let committed = include_str!("../../agent.example.toml");
    let generated = Config::default().to_toml();
    if std::env::var_os("TCPSTALL_BLESS").is_some() && committed != generated {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml");
        std::fs::write(&path, &generated).expect("rewrite agent.example.toml");
        return;
    }
    assert_eq!(
        committed, generated,
        "agent.example.toml drifted: regenerate it with \
             `tcpstall-agent print-config > agent/agent.example.toml` \
             (or run this test with TCPSTALL_BLESS=1)"
    );
    let parsed: Config = toml::from_str(committed).expect("example parses");
    assert_eq!(parsed, Config::default());
    parsed.validate().expect("defaults are valid");
}

#[test]
fn any_config_round_trips_through_its_toml() {
    let c = Config {
        collector: Some("http://198.18.0.1:7786".into()),
        host: Some("db-\"quoted\"".into()),
        interval: Duration::from_millis(1500),
        netns: vec!["lab1".into(), "/proc/1/ns/net".into(), "all".into()],
        buffer: 3,
        batch_max: 500,
        backoff_max: Duration::from_secs(90),
        metrics_listen: Some("[::1]:9102".parse().expect("addr")),
        ..Config::default()
    };
    let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
    assert_eq!(parsed, c);
    let c = Config {
        collector: Some("https://198.18.0.1:7786".into()),
        tls_ca: Some("/etc/ca \"x\".pem".into()),
        tls_cert: Some("/etc/a.crt".into()),
        tls_key: Some("/etc/a.key".into()),
        tls_server_name: Some("collector.example".into()),
        machine_id: Some("4c4c4544004d3510804ec4c04f4d3232".into()),
        ..c
    };
    let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
    assert_eq!(parsed, c);
    let c = Config {
        collector: Some("http://198.18.0.1:7786".into()),
        plaintext: true,
        ..Config::default()
    };
    let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
    assert_eq!(parsed, c);
}

/// A file in a directory removed when the returned guard drops, also
/// when the test fails.
fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

#[test]
fn flags_beat_the_file_and_the_file_beats_defaults() {
    let (_dir, path) = temp_file(
            "layers.toml",
            "interval = \"3s\"\nbuffer = 7\nnetns = [\"lab1\"]\ncollector = \"http://a:1\"\nplaintext = true\n",
        );
    let flags = Flags {
        config: Some(path.clone()),
        buffer: Some(9),
        ..Flags::default()
    };
    let c = Config::load(&flags).expect("load");
    assert_eq!(c.interval, Duration::from_secs(3), "from the file");
    assert_eq!(c.buffer, 9, "the flag wins");
    assert_eq!(c.netns, vec!["lab1".to_string()], "from the file");
    assert_eq!(c.backoff_max, Duration::from_secs(30), "the default");
    assert_eq!(c.require_collectors().expect("set"), ["http://a:1"]);

    let flags = Flags {
        netns: vec!["all".into()],
        collector: vec!["http://b:2".into()],
        ..flags
    };
    let c = Config::load(&flags).expect("load");
    assert_eq!(c.netns, vec!["all".to_string()], "flags replace the list");
    assert_eq!(
        c.collector,
        Some("http://b:2".into()),
        "one flag is one URL"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn bad_files_and_values_are_named() {
    let cases = [
        ("intervall = \"3s\"\n", "intervall"),
        ("interval = \"soon\"\n", "soon"),
        ("interval = \"10ms\"\n", "interval"),
        ("buffer = 0\n", "buffer"),
        ("batch_max = 0\n", "--batch-max"),
        ("batch_max = 8193\n", "batch_max"),
        ("batch_max = -1\n", "batch_max"),
        ("backoff_max = \"1ms\"\n", "backoff_max"),
        ("collector = \"grpc://x:1\"\n", "collector"),
        ("collector = \"x:1\"\n", "collector"),
        ("host = \"two words\"\n", "host"),
        ("host = \"\"\n", "host"),
        ("netns = [\"\"]\n", "netns"),
        ("metrics_listen = \"localhost\"\n", "metrics_listen"),
    ];
    for (i, (text, named)) in cases.iter().enumerate() {
        let (_dir, path) = temp_file(&format!("bad{i}.toml"), text);
        let flags = Flags {
            config: Some(path.clone()),
            ..Flags::default()
        };
        let err = Config::load(&flags).expect_err(text);
        assert!(err.to_string().contains(named), "{text:?} gave {err}");
        let _ = std::fs::remove_file(path);
    }
    let missing = Flags {
        config: Some("/nonexistent/tcpstall-agent.toml".into()),
        ..Flags::default()
    };
    let err = Config::load(&missing).expect_err("missing file");
    assert!(err.to_string().contains("/nonexistent"), "{err}");
}

#[test]
fn batch_max_is_a_flag_and_a_key() {
    let (_dir, path) = temp_file("batch.toml", "batch_max = 64\n");
    let from_file = Flags {
        config: Some(path.clone()),
        ..Flags::default()
    };
    assert_eq!(Config::load(&from_file).expect("load").batch_max, 64);
    let flag = Flags {
        batch_max: Some(1),
        ..from_file
    };
    assert_eq!(
        Config::load(&flag).expect("load").batch_max,
        1,
        "the flag wins"
    );
    assert_eq!(Config::default().batch_max, 128);
    let zero = Flags {
        batch_max: Some(0),
        ..Flags::default()
    };
    let err = Config::load(&zero).expect_err("0 refused");
    assert!(err.to_string().contains("--batch-max"), "{err}");
}

#[test]
fn machine_id_is_a_flag_and_a_key_and_bad_ones_name_the_flag() {
    let (_dir, path) = temp_file("machine.toml", "machine_id = \"from-the-file\"\n");
    let from_file = Flags {
        config: Some(path.clone()),
        ..Flags::default()
    };
    let c = Config::load(&from_file).expect("load");
    assert_eq!(c.machine_id.as_deref(), Some("from-the-file"));
    let id = c.configured_machine_id().expect("valid");
    assert_eq!(id.as_ref().map(MachineId::as_str), Some("from-the-file"));
    let flag = Flags {
        machine_id: Some("4c4c4544004d3510804ec4c04f4d3232".into()),
        ..from_file
    };
    let c = Config::load(&flag).expect("load");
    assert_eq!(
        c.machine_id.as_deref(),
        Some("4c4c4544004d3510804ec4c04f4d3232"),
        "the flag wins"
    );
    // Unset: read from the host at start, not a setting.
    let c = Config::load(&Flags::default()).expect("defaults");
    assert_eq!(c.machine_id, None);
    assert_eq!(c.configured_machine_id().expect("unset"), None);
    for (bad, why) in [
        ("", "empty"),
        ("two words", "printable"),
        ("tab\tin", "printable"),
        ("\u{e9}t\u{e9}", "printable"),
        (&"x".repeat(129), "more than 128"),
    ] {
        let flags = Flags {
            machine_id: Some(bad.to_string()),
            ..Flags::default()
        };
        let err = Config::load(&flags).expect_err(bad).to_string();
        assert!(err.contains("--machine-id"), "{bad:?}: {err}");
        assert!(err.contains("machine_id"), "{bad:?}: {err}");
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    let (_dir, path) = temp_file("bad-machine.toml", "machine_id = \"a b\"\n");
    let err = Config::load(&Flags {
        config: Some(path),
        ..Flags::default()
    })
    .expect_err("from the file too");
    assert!(err.to_string().contains("--machine-id"), "{err}");
}

#[test]
fn plaintext_leaves_this_host_only_when_asked() {
    let load = |collector: &str, plaintext: bool, tls_ca: Option<&str>| {
        Config::load(&Flags {
            collector: vec![collector.into()],
            plaintext,
            tls_ca: tls_ca.map(PathBuf::from),
            ..Flags::default()
        })
    };
    load("http://127.0.0.1:7786", false, None).expect("loopback needs no flag");
    load("http://localhost:7786", false, None).expect("loopback needs no flag");
    let err = load("http://198.18.0.1:7786", false, None).expect_err("refused");
    assert!(err.to_string().contains("--plaintext"), "{err}");
    assert!(err.to_string().contains("https://"), "{err}");
    load("http://198.18.0.1:7786", true, None).expect("asked for");
    load("https://198.18.0.1:7786", false, Some("/ca.pem")).expect("TLS");
    let err = load("https://198.18.0.1:7786", true, None).expect_err("both");
    assert!(err.to_string().contains("plaintext"), "{err}");
    let err =
        load("http://127.0.0.1:7786", false, Some("/ca.pem")).expect_err("TLS file, plain URL");
    assert!(err.to_string().contains("https://"), "{err}");
}

/// Issue 24: several collectors, from repeated flags or a list in the
/// file, each URL checked on its own.
#[test]
fn several_collectors_from_the_flag_repeated_or_a_list_in_the_file() {
    let urls = [
        "http://127.0.0.1:7786",
        "http://[::1]:7787",
        "http://localhost:7788",
    ];
    let flags = Flags {
        collector: urls.iter().map(|u| u.to_string()).collect(),
        ..Flags::default()
    };
    let c = Config::load(&flags).expect("repeated flag");
    assert_eq!(c.require_collectors().expect("set"), urls);

    let (_dir, path) = temp_file(
        "several.toml",
        "collector = [\"https://c1.example:7786\", \"https://c2.example:7786\"]\n",
    );
    let from_file = Flags {
        config: Some(path.clone()),
        ..Flags::default()
    };
    let c = Config::load(&from_file).expect("list in the file");
    assert_eq!(
        c.require_collectors().expect("set"),
        ["https://c1.example:7786", "https://c2.example:7786"]
    );
    assert!(c.client_tls().expect("TLS").is_some(), "https:// for all");
    // It prints back as the list it is, and reads back the same.
    let text = c.to_toml();
    assert!(
        text.contains("\ncollector = [\"https://c1.example:7786\", \"https://c2.example:7786\"]\n"),
        "{text}"
    );
    let parsed: Config = toml::from_str(&text).expect("parses");
    assert_eq!(parsed, c);
    // The flags replace the file's list.
    let c = Config::load(&Flags {
        collector: vec!["http://127.0.0.1:1".into(), "http://127.0.0.2:1".into()],
        ..from_file
    })
    .expect("flags over the file");
    assert_eq!(
        c.require_collectors().expect("set"),
        ["http://127.0.0.1:1", "http://127.0.0.2:1"]
    );
}

/// A bad URL among good ones is refused, naming itself.
#[test]
fn a_bad_collector_among_several_names_itself() {
    let cases: [(&[&str], &str); 5] = [
        (&["http://127.0.0.1:1", "grpc://c2:1"], "`grpc://c2:1`"),
        (&["http://127.0.0.1:1", "c3:1"], "`c3:1`"),
        (&["http://127.0.0.1:1", "http://:1"], "`http://:1`"),
        // Plaintext is checked per URL: loopback needs no flag, another
        // host does.
        (
            &["http://127.0.0.1:1", "http://198.18.0.1:1"],
            "`http://198.18.0.1:1`",
        ),
        (
            &["https://c1.example:1", "http://127.0.0.1:1"],
            "mix https:// and http://",
        ),
    ];
    for (urls, named) in cases {
        let flags = Flags {
            collector: urls.iter().map(|u| u.to_string()).collect(),
            ..Flags::default()
        };
        let err = Config::load(&flags).expect_err(named);
        let text = err.to_string();
        assert!(text.starts_with("collector: "), "{urls:?}: {text}");
        assert!(text.contains(named), "{urls:?}: {text}");
    }
    for (text, named) in [
        (
            "collector = [\"http://127.0.0.1:1\", \"grpc://x:1\"]\n",
            "grpc://x:1",
        ),
        ("collector = []\n", "empty list"),
        ("collector = 5\n", "a collector URL or a list of them"),
        ("collector = [5]\n", "collector"),
    ] {
        let (_dir, path) = temp_file("bad-list.toml", text);
        let err = Config::load(&Flags {
            config: Some(path),
            ..Flags::default()
        })
        .expect_err(text);
        assert!(err.to_string().contains(named), "{text:?} gave {err}");
    }
}

#[test]
fn run_needs_a_collector() {
    let err = Config::default().require_collectors().expect_err("unset");
    assert!(err.to_string().contains("--collector"), "{err}");
}

#[test]
fn following_runs_at_an_eighth_of_the_interval_unless_told() {
    let ms = Duration::from_millis;
    let load = |flags: Flags| Config::load(&flags);
    let c = load(Flags::default()).expect("defaults");
    assert_eq!(c.follow_every(), Some(ms(250)));
    assert_eq!(c.follow_max, 1000);
    let fast = load(Flags {
        interval: Some(ms(500)),
        ..Flags::default()
    })
    .expect("fast");
    assert_eq!(
        fast.follow_every(),
        Some(ms(62) + Duration::from_micros(500))
    );
    let slow = load(Flags {
        interval: Some(Duration::from_secs(60)),
        ..Flags::default()
    })
    .expect("slow");
    assert_eq!(
        slow.follow_every(),
        Some(Duration::from_secs(1)),
        "at most 1s"
    );
    let off = load(Flags {
        follow_interval: Some(Duration::ZERO),
        ..Flags::default()
    })
    .expect("off");
    assert_eq!(off.follow_every(), None);
    let set = load(Flags {
        follow_interval: Some(ms(100)),
        follow_max: Some(5),
        ..Flags::default()
    })
    .expect("set");
    assert_eq!((set.follow_every(), set.follow_max), (Some(ms(100)), 5));
    // The file says it too, and the flag wins.
    let file: Config =
        toml::from_str("follow_interval = \"400ms\"\nfollow_max = 7\n").expect("parses");
    assert_eq!((file.follow_every(), file.follow_max), (Some(ms(400)), 7));
    for (bad, key) in [
        (
            Flags {
                follow_interval: Some(Duration::from_secs(2)),
                ..Flags::default()
            },
            "--follow-interval",
        ),
        (
            Flags {
                follow_interval: Some(ms(1)),
                ..Flags::default()
            },
            "--follow-interval",
        ),
        (
            Flags {
                follow_max: Some(0),
                ..Flags::default()
            },
            "--follow-max",
        ),
    ] {
        let err = load(bad).expect_err("refused");
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn owner_command_lines_are_scrubbed_unless_told_and_words_can_be_added() {
    let argv = ["app", "--db-password=x", "--session-id", "42"];
    let c = Config::load(&Flags::default()).expect("defaults");
    assert_eq!(c.owner_args, OwnerArgs::Scrubbed);
    assert_eq!(
        c.scrubber().command(&argv),
        "app --db-password=******** --session-id 42"
    );
    let file: Config =
        toml::from_str("owner_args = \"none\"\nowner_scrub_words = [\"session-id\"]\n")
            .expect("parses");
    assert_eq!(file.scrubber().command(&argv), "app");
    // The flags win over the file.
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "owner_args = \"none\"\n").expect("write");
    let c = Config::load(&Flags {
        config: Some(path),
        owner_args: Some(OwnerArgs::Scrubbed),
        owner_scrub_words: vec!["session_id".into()],
        ..Flags::default()
    })
    .expect("loads");
    assert_eq!(
        c.scrubber().command(&argv),
        "app --db-password=******** --session-id ********"
    );
    let full = Config {
        owner_args: OwnerArgs::Full,
        ..Config::default()
    };
    assert_eq!(full.scrubber().command(&argv), argv.join(" "));
    let back: Config = toml::from_str(&full.to_toml()).expect("round trip");
    assert_eq!(back.owner_args, OwnerArgs::Full);
    assert!(toml::from_str::<Config>("owner_args = \"some\"\n").is_err());
}

#[test]
fn the_hosts_namespace_is_one_namespace_named_by_its_key() {
    let all = Config {
        host_netns: Some("all".into()),
        ..Config::default()
    };
    let e = all.validate().expect_err("all is refused").to_string();
    assert!(e.contains("host_netns") && e.contains("all"), "{e}");
    let named = Config {
        host_netns: Some("blue".into()),
        ..Config::default()
    };
    assert_eq!(
        named.host_netns_spec().expect("valid"),
        Some(NetnsSpec::Named("blue".into()))
    );
    assert_eq!(Config::default().host_netns_spec().expect("valid"), None);
}
