//! The web page (issue 25) in a real headless Chromium against a real
//! collector whose store holds episodes written at known times: nothing
//! without the token; history's filters and paging return the right rows;
//! an episode's page shows what `tcpstall show --json` says; a command line
//! that is markup shows as text and runs nothing; a 390-pixel window stays
//! usable; no page writes an error to its console.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tcpstall_collector::store::{EpisodeEnd, NewEpisode, StoredSample};
use tcpstall_common::{FlowTuple, ProcessOwner, Side};
use tcpstall_proto::convert::pack;
use tcpstall_tests::browser::Browser;
use tcpstall_tests::fake::stuck;
use tcpstall_tests::stored::{populate, Stored};
use tcpstall_tests::{binary, require_chromium, CollectorProcess};

const TOKEN: &str = "web-test-token-5d1c";
const MARKUP: &str = "<img src=x onerror=alert(1)>";
const DIAGNOSES: [&str; 3] = ["peer_not_reading", "data_lost", "ack_lost"];
/// Ended episodes written: more than two pages of history.
const ENDED: usize = 120;

/// Episode `i` of the history: its diagnosis and A's host cycle.
fn ended(i: usize, start_ms: i64) -> Stored {
    let flow = FlowTuple::new(
        format!("198.18.40.{}:{}", i % 4 + 1, 40_000 + i)
            .parse()
            .expect("a"),
        "198.18.41.1:5432".parse().expect("b"),
    );
    let a = stuck(flow, i as u64, 12_000);
    let started_at_ms = start_ms + i as i64 * 10_000;
    Stored {
        episode: NewEpisode {
            id: 0,
            diagnosis: DIAGNOSES[i % 3].into(),
            summary: format!("episode {i}"),
            evidence: BTreeMap::from([("a_sendq".to_string(), 5000)]),
            basis: Default::default(),
            started_at_ms,
            duration_ms: 12_000,
            stuck_bytes: a.pos.sendq,
            a_host: format!("web-{}", i % 4),
            a_netns: a.netns.clone(),
            a_flow: flow,
            a_cookie: a.cookie,
            b_host: Some("db-1".into()),
            peer_note: None,
            via: None,
        },
        samples: vec![StoredSample {
            side: Side::A,
            host: format!("web-{}", i % 4),
            at_ms: started_at_ms + 10_000,
            sample: pack(&a),
        }],
        end: Some(EpisodeEnd {
            ended_at_ms: started_at_ms + 12_000,
            end_reason: "moved".into(),
            duration_ms: 12_000,
        }),
    }
}

/// A stall whose reader's command line is markup (left open: the
/// collector ends it as it starts).
fn hostile(start_ms: i64) -> Stored {
    let flow = FlowTuple::new(
        "198.18.42.1:8080".parse().expect("a"),
        "198.18.42.2:41000".parse().expect("b"),
    );
    let a = stuck(flow, 900, 12_000);
    // B's queue empty, its receive queue full (as a reader that stopped).
    let mut b = stuck(flow.reversed(), 901, 0);
    b.pos.sendq = 0;
    b.pos.notsent = Some(0);
    b.pos.inflight = Some(0);
    b.pos.snd_nxt = b.pos.snd_una;
    b.pos.write_seq = b.pos.snd_una;
    b.owner = Some(Box::new(ProcessOwner {
        pid: 4242,
        command: MARKUP.into(),
        unit: None,
        cgroup: None,
    }));
    let started_at_ms = start_ms + ENDED as i64 * 10_000;
    Stored {
        episode: NewEpisode {
            id: 0,
            diagnosis: "peer_not_reading".into(),
            summary: "reader-x is not reading".into(),
            evidence: BTreeMap::from([("b_recvq".to_string(), 6000)]),
            basis: Default::default(),
            started_at_ms,
            duration_ms: 30_000,
            stuck_bytes: a.pos.sendq,
            a_host: "server-x".into(),
            a_netns: a.netns.clone(),
            a_flow: flow,
            a_cookie: a.cookie,
            b_host: Some("reader-x".into()),
            peer_note: None,
            via: None,
        },
        samples: vec![
            StoredSample {
                side: Side::A,
                host: "server-x".into(),
                at_ms: started_at_ms + 10_000,
                sample: pack(&a),
            },
            StoredSample {
                side: Side::B,
                host: "reader-x".into(),
                at_ms: started_at_ms + 10_000,
                sample: pack(&b),
            },
        ],
        end: None,
    }
}

fn show(url: &str, token: &std::path::Path, id: i64) -> Value {
    let o = Command::new(binary("tcpstall"))
        .args(["--collector", url, "--token-file"])
        .arg(token)
        .args(["--json", "show", &id.to_string()])
        .env_remove("TCPSTALL_COLLECTOR")
        .output()
        .expect("run tcpstall");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON")
}

/// The page has no error in its console and no horizontal scroll.
fn clean(b: &Browser, what: &str) {
    let errors = b.console_errors();
    assert!(errors.is_empty(), "{what}: console errors {errors:#?}");
    let fits = b.script("return document.documentElement.scrollWidth <= window.innerWidth + 1");
    assert_eq!(fits, Value::Bool(true), "{what}: wider than the window");
}

fn ids_listed(b: &Browser) -> Vec<i64> {
    b.find_all("tr.episode")
        .iter()
        .filter_map(|e| b.attr(e, "data-episode")?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_in_a_real_browser() {
    require_chromium!();
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let token = dir.path().join("query.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
    // An hour ago: inside the history's default day.
    let start_ms = tcpstall_common::time::unix_ms(std::time::SystemTime::now()) - 3_600_000;
    let mut eps: Vec<Stored> = (0..ENDED).map(|i| ended(i, start_ms)).collect();
    eps.push(hostile(start_ms));
    let ids = populate(&dir.path().join("tcpstall.db"), eps).await;
    let hostile_id = ids[ENDED];
    let collector = CollectorProcess::start_in(
        dir.clone(),
        "127.0.0.1:0",
        &[
            "--web-listen",
            "127.0.0.1:0",
            "--query-token-file",
            token.to_str().expect("path"),
        ],
    );
    let web = tcpstall_tests::wait_for("the web page's address", Duration::from_secs(10), || {
        collector.web_url()
    });
    let b = Browser::start(1280, 900);
    let wait = Duration::from_secs(10);

    // Nothing without the token: to the sign-in page, a wrong one refused.
    b.goto(&format!("{web}now"));
    assert!(b.url().ends_with("/signin"), "{}", b.url());
    clean(&b, "sign-in");
    b.keep_screenshot("signin");
    let field = b.find("#token").expect("the token field");
    b.type_into(&field, "not-the-token");
    b.click(&b.find("form.signin button").expect("sign in"));
    b.wait("the refusal", wait, |b| b.find("p.error"));
    assert!(b.url().ends_with("/signin?failed"), "{}", b.url());
    b.type_into(&b.find("#token").expect("the token field"), TOKEN);
    b.click(&b.find("form.signin button").expect("sign in"));
    b.wait("the Now page", wait, |b| {
        b.url().ends_with("/now").then_some(())
    });
    clean(&b, "now");

    // Now: nothing open (a collector that starts ends what a previous run
    // left open; the lab's tests show live stalls here).
    b.find("#live p.empty").expect("no stuck pairs now");
    let shown = show(&collector.url(), &token, hostile_id);

    // The episode: what show --json says; the command line as text.
    b.goto(&format!("{web}episodes/{hostile_id}"));
    clean(&b, "episode");
    let text_of = |css: &str| b.find(css).map(|e| b.text(&e)).unwrap_or_default();
    assert_eq!(
        text_of("h1 .diagnosis"),
        shown["diagnosis"].as_str().unwrap_or("")
    );
    assert_eq!(
        text_of("td.a-host"),
        shown["peer"]["a"]["host"].as_str().unwrap_or("")
    );
    assert_eq!(
        text_of("td.b-host"),
        shown["peer"]["b"]["host"].as_str().unwrap_or("")
    );
    assert_eq!(
        text_of("td.a-local"),
        shown["peer"]["a"]["local"].as_str().unwrap_or("")
    );
    assert_eq!(
        b.find("td.stuck").and_then(|c| b.attr(&c, "data-bytes")),
        shown["stuck"].as_u64().map(|n| n.to_string())
    );
    assert_eq!(text_of("td.b-owner"), format!("4242 {MARKUP}"));
    // Who each end is: its Community ID as the CLI computes it.
    for side in ["a", "b"] {
        assert_eq!(
            text_of(&format!("td.{side}-community")),
            shown["peer"][side]["community_id"].as_str().unwrap_or("?"),
            "{side}'s Community ID"
        );
    }
    // diff's facts, with their sources: A's send queue and B's unread
    // bytes as show --json has them.
    let fact = |name: &str, cell: &str| text_of(&format!("tr[data-fact=\"{name}\"] td.{cell}"));
    let human = |v: &Value| tcpstall_common::facts::human_bytes(v.as_u64().unwrap_or(u64::MAX));
    assert_eq!(fact("send queue", "a"), human(&shown["peer"]["a"]["sendq"]));
    assert_eq!(
        fact("receive queue (unread)", "b"),
        human(&shown["peer"]["b"]["recvq"])
    );
    assert_eq!(fact("send queue", "source"), "tcp_info");
    assert_eq!(fact("owner pid", "b"), "4242 (proc)");
    assert_eq!(fact("owner pid", "source"), "proc");
    // Its picture, inline, with its curves (one poll of each end: each
    // curve is a point), and its values under the pointer.
    let drawn = b.script(
        "const s = document.querySelector('figure.plot svg'); \
         return !!s && s.getBoundingClientRect().width > 300 \
           && !!s.querySelector('#curve-a-snd-una circle') && !!s.querySelector('#curve-b-rcv-nxt circle')",
    );
    assert_eq!(drawn, Value::Bool(true), "the picture is not drawn");
    let figure = b.find("figure.plot svg").expect("the picture");
    let colours = tcpstall_tests::browser::colours(&b.element_screenshot(&figure));
    assert!(colours >= 8, "the picture has {colours} colours: blank?");
    let column = b
        .find("figure.plot rect.hover-at")
        .expect("a column to point at");
    b.hover(&column);
    let readout = b.wait("the values under the pointer", wait, |b| {
        let t = b.find("#plot-readout").map(|e| b.text(&e))?;
        t.contains("A.snd_una").then_some(t)
    });
    for (curve, side, field) in [
        ("A.snd_una", "a", "snd_una"),
        ("A.write_seq", "a", "write_seq"),
        ("B.rcv_nxt", "b", "rcv_nxt"),
        ("B.copied", "b", "copied"),
    ] {
        let want = format!("{curve} {}", shown["peer"][side][field]);
        assert!(
            readout.lines().any(|l| l == want),
            "no `{want}` in {readout:?}"
        );
    }
    let (status, svg) = tcpstall_tests::http_get(
        &web,
        &format!("/episodes/{hostile_id}/plot.svg"),
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{svg}");
    // One poll of each end: each curve is a point.
    assert!(
        svg.contains("class=\"curve\"") && svg.contains("<circle"),
        "{svg}"
    );
    let (status, _) =
        tcpstall_tests::http_get(&web, &format!("/episodes/{hostile_id}/plot.svg"), None);
    assert_eq!(status, 401, "the picture needs the token too");
    b.keep_screenshot("episode-markup");
    let images = b.script("return document.querySelectorAll('img, [onerror]').length");
    assert_eq!(
        images,
        Value::from(0),
        "markup from a host became an element"
    );
    // Its JSON, linked from the page.
    b.goto(&format!("{web}episodes/{hostile_id}.json"));
    let j: Value = serde_json::from_str(&text_of("pre")).unwrap_or(Value::Null);
    assert_eq!(j["stuck"], shown["stuck"], "{j}");

    // History: newest first, 50 a page, older pages follow without overlap.
    b.goto(&format!("{web}episodes"));
    clean(&b, "history");
    b.keep_screenshot("history");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = ids_listed(&b);
        assert!(!page.is_empty());
        seen.extend(page);
        pages += 1;
        match b.find("a.older") {
            Some(older) => {
                b.click(&older);
                b.wait("the older page", wait, |b| {
                    (!ids_listed(b).is_empty() && !seen.contains(&ids_listed(b)[0])).then_some(())
                });
            }
            None => break,
        }
    }
    let mut want: Vec<i64> = ids.clone();
    want.reverse();
    assert_eq!(seen, want, "every episode once, newest first");
    assert_eq!(pages, 3);
    // Its chart: every episode of the window counted once, by diagnosis.
    let chart = b.script(
        "const i = document.querySelector('img.chart'); return !!i && i.complete && i.naturalWidth > 0",
    );
    assert_eq!(chart, Value::Bool(true), "the chart did not load");
    let counted = |query: &str| -> std::collections::BTreeMap<String, u64> {
        let (status, svg) =
            tcpstall_tests::http_get(&web, &format!("/episodes/chart.svg?{query}"), Some(TOKEN));
        assert_eq!(status, 200, "{svg}");
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for bar in svg.split("<rect class=\"bar\"").skip(1) {
            let attr = |name: &str| {
                bar.split_once(&format!("{name}=\""))
                    .and_then(|(_, r)| r.split_once('"'))
                    .map(|(v, _)| v.to_string())
                    .unwrap_or_default()
            };
            *by.entry(attr("data-diagnosis")).or_default() +=
                attr("data-count").parse::<u64>().unwrap_or(0);
        }
        by
    };
    let all = counted("since=24h&state=all");
    assert_eq!(all.values().sum::<u64>(), ids.len() as u64, "{all:?}");
    let (status, _) = tcpstall_tests::http_get(&web, "/episodes/chart.svg", None);
    assert_eq!(status, 401, "the chart needs the token too");

    // Filters, through the form: data_lost with A on web-1.
    b.goto(&format!("{web}episodes"));
    b.click(
        &b.find("select[name=diagnosis] option[value=data_lost]")
            .expect("option"),
    );
    b.type_into(&b.find("input[name=host]").expect("host field"), "web-1");
    b.click(&b.find("form.filters button").expect("filter"));
    b.wait("the filtered list", wait, |b| {
        b.url().contains("diagnosis=data_lost").then_some(())
    });
    let listed = ids_listed(&b);
    let want: Vec<i64> = (0..ENDED)
        .rev()
        .filter(|i| i % 3 == 1 && i % 4 == 1)
        .map(|i| ids[i])
        .collect();
    assert_eq!(listed, want);
    let filtered = counted("since=24h&state=all&diagnosis=data_lost&host=web-1");
    assert_eq!(
        filtered,
        std::collections::BTreeMap::from([("data_lost".to_string(), want.len() as u64)])
    );
    b.goto(&format!("{web}episodes?state=open"));
    assert!(ids_listed(&b).is_empty() && b.find("p.empty").is_some());

    // Flow: a bad endpoint is named; a good one is watched (no agent
    // here reports it); a POST from another site is refused.
    b.goto(&format!("{web}flow"));
    clean(&b, "flow");
    b.type_into(&b.find("input[name=a]").expect("A"), "10.0.0.1");
    b.type_into(&b.find("input[name=b]").expect("B"), "10.0.0.2:80");
    b.click(&b.find("form.flow button").expect("watch"));
    let error = b.wait("the refusal", wait, |b| {
        b.find("p.error").map(|e| b.text(&e))
    });
    assert!(error.contains("(a) `10.0.0.1` is not ADDR:PORT"), "{error}");
    let a = b.find("input[name=a]").expect("A");
    b.script("document.querySelector('input[name=a]').value = ''; return null;");
    b.type_into(&a, "10.0.0.1:7000");
    b.click(&b.find("form.flow button").expect("watch"));
    let none = b.wait("the watched flow", wait, |b| {
        b.find("#flow-live p.empty").map(|e| b.text(&e))
    });
    assert!(
        none.contains("No agent reports 10.0.0.1:7000 -> 10.0.0.2:80"),
        "{none}"
    );
    clean(&b, "flow watched");
    let body = "a=10.0.0.1%3A7000&b=10.0.0.2%3A80";
    let (status, answer) = tcpstall_tests::http_request(
        &web,
        "POST",
        "/flow/live",
        Some(TOKEN),
        &[
            ("Origin", "http://attacker.example"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body,
    );
    assert_eq!(status, 403, "{answer}");
    let (status, answer) =
        tcpstall_tests::http_request(&web, "POST", "/flow/live", Some(TOKEN), &[], body);
    assert_eq!(status, 200, "{answer}");
    let (status, _) = tcpstall_tests::http_request(&web, "POST", "/flow/live", None, &[], body);
    assert_eq!(status, 401, "a watch needs the token");
    let (status, _) = tcpstall_tests::http_get(&web, "/flow/live", Some(TOKEN));
    assert_eq!(status, 405, "a watch is not a GET");

    // Hosts: the page answers (no agent here said hello).
    b.goto(&format!("{web}hosts"));
    clean(&b, "hosts");

    // A phone's width: every page fits, its navigation visible.
    b.resize(390, 844);
    for page in [
        "now",
        "episodes",
        &format!("episodes/{hostile_id}"),
        "flow",
        "hosts",
    ] {
        b.goto(&format!("{web}{page}"));
        clean(&b, page);
        if page == "episodes" {
            b.keep_screenshot("history-390px");
        }
        let nav = b.script(
            "return [...document.querySelectorAll('nav a')].every(a => { \
               const r = a.getBoundingClientRect(); return r.width > 0 && r.right <= window.innerWidth; })",
        );
        assert_eq!(nav, Value::Bool(true), "{page}: navigation out of view");
    }

    // Signed out: back to the sign-in page.
    b.click(&b.find("form.signout button").expect("sign out"));
    b.wait("signed out", wait, |b| {
        b.url().ends_with("/signin").then_some(())
    });
    b.goto(&format!("{web}now"));
    assert!(b.url().ends_with("/signin"));
}
