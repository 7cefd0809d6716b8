//! Incidents from real stalls (issue 25): two clients, on two hosts, stop
//! reading one server's responses at once. The server's two stuck sends
//! are one incident, named for the server, with both pairs beneath it in
//! `tcpstall report`; when the clients read again it ends.

use std::time::Duration;

use serde_json::Value;
use tcpstall_tests::lab::workload::{Pace, Rpc};
use tcpstall_tests::lab::{Lab, Settings};
use tcpstall_tests::wait_for;

use super::RESPONSE;

fn two_clients_that_stop_reading_are_one_incident(s: Settings) {
    let lab = Lab::start(&["client", "server", "other"], s);
    let (client, server, other) = (lab.host("client"), lab.host("server"), lab.host("other"));
    let mut first = Rpc::open(client, server);
    let mut second = Rpc::open(other, server);
    let (n1, n2) = (first.request(RESPONSE), second.request(RESPONSE));
    let (r1, r2) = (first.read(Pace::Paused), second.read(Pace::Paused));
    let _w1 = first.respond(n1);
    let _w2 = second.respond(n2);

    // Both stalls open within the threshold and two polls of each other;
    // the wait allows for both and the polls the join takes.
    let due = s.threshold + 6 * s.interval + Duration::from_secs(5);
    let incident = wait_for("one incident of both stuck pairs", due, || {
        let list = lab.cli(&["incidents"]);
        let list = list.as_array()?;
        (list.len() == 1 && list[0]["pairs"] == 2).then(|| list[0].clone())
    });
    let id = incident["id"].as_i64().expect("an id");
    assert_eq!(incident["diagnosis"], "peer_not_reading", "{incident:#}");
    assert_eq!(incident["host"], server.name.as_str(), "{incident:#}");
    assert_eq!(
        incident["role"], "sender",
        "the server is A of both: {incident:#}"
    );
    assert_eq!(incident["hosts"], 2, "{incident:#}");
    assert_eq!(incident["open"], true, "{incident:#}");
    assert_eq!(
        incident["title"],
        format!("2 hosts not reading from {} (2 pairs)", server.name),
    );

    // Each episode names it; the report prints both pairs beneath it.
    let eps = lab.cli(&["report"]);
    let eps = eps.as_array().expect("an array of episodes");
    assert_eq!(eps.len(), 2, "{eps:#?}");
    let mut peers: Vec<&str> = eps
        .iter()
        .map(|e| {
            assert_eq!(e["incident"], id, "{e:#}");
            e["peer"]["b"]["host"].as_str().unwrap_or("?")
        })
        .collect();
    peers.sort_unstable();
    let mut want = vec![client.name.as_str(), other.name.as_str()];
    want.sort_unstable();
    assert_eq!(peers, want);
    let text = lab.cli_text(&["report"]);
    let head = format!("Incident #{id}: 2 hosts not reading from {}", server.name);
    let at = text
        .find(&head)
        .unwrap_or_else(|| panic!("{head:?} missing:\n{text}"));
    let below = &text[at..];
    for peer in want {
        assert!(
            below.contains(peer),
            "{peer} missing beneath the incident:\n{text}"
        );
    }
    assert_eq!((r1.got(), r2.got()), (0, 0), "the clients read nothing");

    // The clients read again: the incident ends with its episodes.
    r1.resume();
    r2.resume();
    let ended: Value = wait_for("the incident ended", due, || {
        let list = lab.cli(&["incidents"]);
        list.as_array()?
            .iter()
            .find(|i| i["id"] == id && i["open"] == false)
            .cloned()
    });
    assert_eq!(ended["pairs"], 2, "{ended:#}");
    assert!(ended["ended_at"].is_string(), "{ended:#}");
}

at_both_settings!(two_clients_that_stop_reading_are_one_incident:
    two_clients_that_stop_reading_a_server_are_one_incident_fast,
    two_clients_that_stop_reading_a_server_are_one_incident_at_the_defaults);
