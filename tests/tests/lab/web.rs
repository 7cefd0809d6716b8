//! The web page (issue 25) in a real headless Chromium against the lab's
//! collector, real agents and real stalls: the Now page shows the stalled
//! reader as `peer_not_reading` with both ends and the numbers `tcpstall
//! show --json` gives, and a second stall on the same server joins the same
//! incident without a reload; the episode's page has its picture with the
//! values under the pointer and diff's facts as the CLI has them; the Flow
//! page watches the same connection live; the Hosts page lists the agents.

use std::time::Duration;

use serde_json::Value;
use tcpstall_tests::browser::Browser;
use tcpstall_tests::lab::workload::{Pace, Rpc};
use tcpstall_tests::lab::{Lab, Settings};
use tcpstall_tests::{require_chromium, wait_for};

use super::RESPONSE;

fn now_page_follows_stalls_into_one_incident(s: Settings) {
    let lab = Lab::start_with_collector_args(
        &["client", "server", "other"],
        s,
        &["--web-listen", "127.0.0.1:0"],
    );
    let web = wait_for("the web page's address", Duration::from_secs(10), || {
        lab.collector.web_url()
    });
    let b = Browser::start(1280, 900);
    b.goto(&format!("{web}now"));
    b.find("#live p.empty").expect("nothing stuck yet");
    // Marks this load of the page: a reload would lose it.
    b.script("window.tcpstallTestMark = 'still this load'; return null;");
    let (client, server, other) = (lab.host("client"), lab.host("server"), lab.host("other"));
    let due = s.threshold + 6 * s.interval + Duration::from_secs(5);

    // The client stops reading the server's answer.
    let mut first = Rpc::open(client, server);
    let n = first.request(RESPONSE);
    let _r1 = first.read(Pace::Paused);
    let _w1 = first.respond(n);
    let incident = b.wait("the stall on the Now page", due, |b| {
        b.find("section.incident tr.pair")
            .filter(|row| b.text(row).contains(&client.name))
            .and_then(|_| b.find("section.incident"))
    });
    let id = b.attr(&incident, "data-incident").expect("an incident id");
    let row = b.find("tr.pair").expect("its pair");
    let episode = b.attr(&row, "data-episode").expect("its episode");
    let cells = b.text(&row);
    for want in [
        server.name.as_str(),
        client.name.as_str(),
        "peer_not_reading",
    ] {
        assert!(cells.contains(want), "{want} missing from {cells:?}");
    }
    // Its numbers as the CLI has them (the page updated since: the same
    // episode, its bytes stuck as they were when it was stored).
    let shown = lab.cli(&["show", &episode]);
    assert_eq!(shown["diagnosis"], "peer_not_reading");
    let a = &shown["peer"]["a"];
    assert_eq!(a["host"], server.name.as_str());
    assert!(
        cells.contains(a["local"].as_str().unwrap_or("?")),
        "{cells} / {shown:#}"
    );
    assert_eq!(shown["peer"]["b"]["host"], client.name.as_str());
    let bytes = b
        .find(&format!(
            "tr.pair[data-episode=\"{episode}\"] td[data-bytes]"
        ))
        .and_then(|c| b.attr(&c, "data-bytes"));
    assert_eq!(bytes, shown["stuck"].as_u64().map(|n| n.to_string()));

    // The other host stops reading the same server: the same incident,
    // two pairs, on the page as it was loaded.
    let mut second = Rpc::open(other, server);
    let n = second.request(RESPONSE);
    let _r2 = second.read(Pace::Paused);
    let _w2 = second.respond(n);
    b.wait("the second stall in the same incident", due, |b| {
        let sel = format!("section.incident[data-incident=\"{id}\"]");
        let inc = b.find(&sel)?;
        (b.attr(&inc, "data-pairs").as_deref() == Some("2")).then_some(())
    });
    assert_eq!(
        b.script("return window.tcpstallTestMark || null;"),
        Value::from("still this load"),
        "the page was reloaded"
    );
    let title = b
        .find("section.incident h2")
        .map(|h| b.text(&h))
        .unwrap_or_default();
    assert_eq!(
        title,
        format!("2 hosts not reading from {} (2 pairs)", server.name)
    );
    b.keep_screenshot("now");
    let errors = b.console_errors();
    assert!(errors.is_empty(), "console errors {errors:#?}");
    // The first stall's own page.
    b.goto(&format!("{web}episodes/{episode}"));
    b.find("td.b-owner").expect("the episode's page");
    b.wait("the picture drawn", due, |b| {
        let drawn = b.script(
            "const s = document.querySelector('figure.plot svg'); \
             return !!s && !!s.querySelector('#curve-a-snd-una polyline')",
        );
        (drawn == Value::Bool(true)).then_some(())
    });
    let (status, svg) =
        tcpstall_tests::http_get(&web, &format!("/episodes/{episode}/plot.svg"), None);
    assert_eq!(status, 200, "{svg}");
    assert!(
        svg.contains("class=\"curve\"") && svg.contains("<polyline"),
        "no curves: {svg}"
    );
    // The values under the pointer at the last poll: A's stuck snd_una
    // and B's rcv_nxt as show --json has them.
    let last = b
        .find_all("figure.plot rect.hover-at")
        .pop()
        .expect("columns to point at");
    b.hover(&last);
    let readout = b.wait("the values under the pointer", due, |b| {
        let t = b.find("#plot-readout").map(|e| b.text(&e))?;
        t.contains("A.snd_una").then_some(t)
    });
    for (curve, side, field) in [("A.snd_una", "a", "snd_una"), ("B.rcv_nxt", "b", "rcv_nxt")] {
        let want = format!("{curve} {}", shown["peer"][side][field]);
        assert!(
            readout.lines().any(|l| l == want),
            "no `{want}` in {readout:?}"
        );
    }
    // diff's facts: A's send queue, B's unread bytes.
    let fact = |name: &str, cell: &str| {
        b.find(&format!("tr[data-fact=\"{name}\"] td.{cell}"))
            .map(|e| b.text(&e))
            .unwrap_or_default()
    };
    let human = |v: &Value| tcpstall_common::facts::human_bytes(v.as_u64().unwrap_or(u64::MAX));
    assert_eq!(fact("send queue", "a"), human(&shown["peer"]["a"]["sendq"]));
    assert_eq!(fact("state", "b"), "ESTAB");
    // The picture as the browser drew it: not blank, its curves in colour.
    let figure = b.find("figure.plot svg").expect("the picture");
    let drawn = tcpstall_tests::browser::colours(&b.element_screenshot(&figure));
    assert!(drawn >= 8, "the picture has {drawn} colours: blank?");
    b.keep_screenshot("episode");
    b.script("document.querySelector('figure.plot').scrollIntoView(); return null;");
    b.keep_screenshot("episode-picture");

    // The Flow page: the same connection watched live, both ends.
    b.goto(&format!("{web}flow"));
    b.type_into(
        &b.find("input[name=a]").expect("A"),
        a["local"].as_str().unwrap_or("?"),
    );
    b.type_into(
        &b.find("input[name=b]").expect("B"),
        a["remote"].as_str().unwrap_or("?"),
    );
    b.click(&b.find("form.flow button").expect("watch"));
    b.wait("both ends on the Flow page", due, |b| {
        let host = |css: &str| b.find(css).map(|e| b.text(&e)).unwrap_or_default();
        (host("#flow-live td.a-host") == server.name && host("#flow-live td.b-host") == client.name)
            .then_some(())
    });
    b.script("window.tcpstallTestMark = 'this flow page'; return null;");
    b.wait("the Flow page updated by itself", due, |b| {
        let status = b
            .find("#flow-status")
            .map(|e| b.text(&e))
            .unwrap_or_default();
        status.contains("updated").then_some(())
    });
    assert_eq!(
        b.script("return window.tcpstallTestMark || null;"),
        Value::from("this flow page"),
        "the Flow page was reloaded"
    );
    assert_eq!(fact("send queue", "a"), human(&shown["peer"]["a"]["sendq"]));
    assert_eq!(fact("state", "a"), "ESTAB");
    b.keep_screenshot("flow");

    // Hosts: the lab's agents, their probes and drops.
    b.goto(&format!("{web}hosts"));
    for h in [client, server, other] {
        let row = b
            .find(&format!("tr.host[data-host=\"{}\"]", h.name))
            .unwrap_or_else(|| panic!("{} not on the Hosts page", h.name));
        let cells = b.text(&row);
        assert!(
            cells.contains("connected") && cells.contains("sock_diag"),
            "{cells}"
        );
    }
    b.keep_screenshot("hosts");
    let errors = b.console_errors();
    assert!(errors.is_empty(), "console errors {errors:#?}");
}

#[test]
fn the_now_page_follows_a_stalled_reader_and_a_second_joins_its_incident_fast() {
    tcpstall_tests::require_root!();
    require_chromium!();
    now_page_follows_stalls_into_one_incident(Settings::FAST);
}

#[test]
fn the_now_page_follows_a_stalled_reader_and_a_second_joins_its_incident_at_the_defaults() {
    tcpstall_tests::require_root!();
    require_chromium!();
    now_page_follows_stalls_into_one_incident(Settings::DEFAULTS);
}
