//! Fleet mode (issue 24): the lab's hosts stream to several collector
//! nodes on a real NATS cluster (three servers, JetStream replicas 3) that
//! share a store; a stall whose two ends report to different nodes is
//! joined and diagnosed as a single collector does.

use std::time::SystemTime;

use tcpstall_tests::lab::fleet::Shape;
use tcpstall_tests::lab::workload::{Pace, Rpc};
use tcpstall_tests::lab::{evidence, Lab, Settings};
use tcpstall_tests::{require_nats, require_root};

use crate::{expect_one, RESPONSE};

const HOSTS: &[&str] = &["client", "server"];

fn fleet(settings: Settings) -> Lab {
    Lab::start_fleet(HOSTS, settings, Shape::three())
}

#[test]
fn a_stall_whose_ends_report_to_different_nodes_is_peer_not_reading() {
    require_root!();
    require_nats!();
    let lab = fleet(Settings::FAST);
    let mut rpc = Rpc::open(lab.host("client"), lab.host("server"));
    let len = rpc.request(RESPONSE);
    let _reader = rpc.read(Pace::Paused);
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);
    let (e, _, _) = expect_one(&lab, &rpc, "peer_not_reading", fault);
    assert_eq!(
        evidence(&e, "b_rcv_wnd"),
        0,
        "B's zero window, from B's node"
    );
}
