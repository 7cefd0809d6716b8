//! Both ends of a connection side by side, as the episode and flow pages
//! show them: who each end is (host, its own addresses, Community ID, the
//! NAT its host's conntrack saw, the process), then `tcpstall diff`'s facts
//! ([`tcpstall_common::facts`]) with their sources.

use maud::{html, Markup};
use tcpstall_common::facts::facts;
use tcpstall_common::{EndSample, FlowTuple, ProcessOwner, Translation};

/// One end as known: its host, its own 4-tuple (local first), and its
/// latest sample when it has one.
pub struct End<'a> {
    pub host: Option<&'a str>,
    pub flow: FlowTuple,
    pub sample: Option<&'a EndSample>,
}

/// Who A and B are, row by row; cells carry classes `a-…`/`b-…` for tools
/// and tests. `stuck`: A's stuck bytes, for an episode.
pub fn who(a: &End, b: &End, stuck: Option<u32>) -> Markup {
    let owner = |e: &End| owner_text(e.sample.and_then(|s| s.owner.as_deref()));
    let nat = |e: &End| e.sample.and_then(|s| s.translation.as_deref()).map(translation_text);
    html! {
        div.scroll {
            table.ends {
                thead { tr { th {} th { "A (sender)" } th { "B (peer)" } } }
                tbody {
                    tr { th { "Host" } td.a-host { (a.host.unwrap_or("?")) } td.b-host { (b.host.unwrap_or("?")) } }
                    tr { th { "Its own end" } td.a-local.addr { (a.flow.local) } td.b-local.addr { (b.flow.local) } }
                    tr { th { "Its peer" } td.a-remote.addr { (a.flow.remote) } td.b-remote.addr { (b.flow.remote) } }
                    tr {
                        th { abbr title="The flow's key in Zeek, Suricata and Elastic data (v1, seed 0)" { "Community ID" } }
                        td.a-community.addr { (a.flow.community_id()) }
                        td.b-community.addr { (b.flow.community_id()) }
                    }
                    @if nat(a).is_some() || nat(b).is_some() {
                        tr {
                            th { "NAT (conntrack)" }
                            td.a-nat.addr { (nat(a).unwrap_or_else(|| "-".into())) }
                            td.b-nat.addr { (nat(b).unwrap_or_else(|| "-".into())) }
                        }
                    }
                    tr { th { "Process" } td.a-owner { (owner(a)) } td.b-owner { (owner(b)) } }
                    @if let Some(n) = stuck {
                        tr { th { "Bytes stuck" } td.stuck data-bytes=(n) { (n) " (" (super::pages::bytes(u64::from(n))) ")" } td { "-" } }
                    }
                }
            }
        }
    }
}

/// `tcpstall diff`'s facts: one row each, `data-fact` its name.
pub fn fact_table(a: &End, b: &End) -> Markup {
    let rows = facts(a.sample, b.sample);
    html! {
        div.scroll {
            table.facts {
                thead { tr { th { "Fact" } th { "A" } th { "B" } th { "What it means" } th { "Source" } } }
                tbody {
                    @for f in &rows {
                        tr data-fact=(f.name) {
                            th { (f.name) }
                            td.a { (f.a) }
                            td.b { (f.b) }
                            td.meaning { (f.meaning) }
                            td.source { (f.source) }
                        }
                    }
                }
            }
        }
        p.meta {
            "Sources: tcp_info is the kernel's view of the socket over sock_diag; probe is the BPF or getsockopt probe (each value names which); proc is /proc; bpf is the BPF probe. "
            "Positions count bytes from the connection's start (its ISN)."
        }
    }
}

/// An owner as one line: pid, command line, unit.
pub fn owner_text(o: Option<&ProcessOwner>) -> String {
    match o {
        Some(o) => match &o.unit {
            Some(u) => format!("{} {} ({u})", o.pid, o.command),
            None => format!("{} {}", o.pid, o.command),
        },
        None => "-".into(),
    }
}

/// A conntrack entry as one line: `original ⇄ reply (SNAT, DNAT)`.
fn translation_text(t: &Translation) -> String {
    let kinds: Vec<&str> = [(t.src_nat, "SNAT"), (t.dst_nat, "DNAT")]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
    format!(
        "{} ⇄ {}{}",
        t.original,
        t.reply,
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        }
    )
}
