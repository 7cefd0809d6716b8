//! Text for people in a hurry: the stuck-pair report, the episode list,
//! one episode, and both ends side by side with what each pair of numbers
//! means. Plain columns sized to fit; colour only on a terminal.
//!
//! Each end is printed at its own addresses; when a NAT between the ends
//! makes the other end know it by others, those follow in parentheses
//! (`web-1 10.1.0.7:8080 (B sees 10.96.0.10:80)`), and `show` names the
//! translation that joined them.

use std::fmt::Write as _;

use tcpstall_client::table::{human_bytes, Table};
use tcpstall_common::facts::facts;

use crate::model::{EndView, EpisodeView, IncidentView};

/// ANSI colour, on when stdout is a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    pub fn bad(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

/// The comparison that proves a diagnosis, in one short line.
pub fn key_evidence(e: &EpisodeView) -> String {
    let a = &e.peer.a.pos;
    let mut out = format!("A una {} nxt {}", opt(a.snd_una), opt(a.snd_nxt));
    match e.peer.b.as_ref().filter(|b| b.seen) {
        Some(b) => {
            let _ = write!(
                out,
                " / B rcv {}; wnd A {} B {}; B unread {}",
                opt(b.pos.rcv_nxt),
                opt(a.snd_wnd.map(u64::from).map(human_bytes)),
                opt(b.pos.rcv_wnd.map(u64::from).map(human_bytes)),
                human_bytes(u64::from(b.pos.recvq))
            );
        }
        None => {
            let _ = write!(
                out,
                "; wnd A {}",
                opt(a.snd_wnd.map(u64::from).map(human_bytes))
            );
        }
    }
    out
}

fn end_name(v: &EndView) -> String {
    format!("{} {}", v.host, v.local)
}

/// An end by host and own address, then the address the other end knows
/// it by when that differs (a translation between them):
/// `web-1 10.1.0.7:8080 (B sees 10.96.0.10:80)`.
fn end_seen(v: &EndView, other: Option<&EndView>, other_side: &str) -> String {
    let mut out = end_name(v);
    if let Some(seen) = v.as_seen_by(other).filter(|f| f.local != v.flow.local) {
        let _ = write!(out, " ({other_side} sees {})", seen.local);
    }
    out
}

/// The report's and the list's cells of both ends.
fn end_cells(e: &EpisodeView) -> (String, Option<String>) {
    let (a, b) = (&e.peer.a, e.peer.b.as_ref());
    (end_seen(a, b, "B"), b.map(|b| end_seen(b, Some(a), "A")))
}

/// `tcpstall report`: one row per stuck pair.
pub fn report(eps: &[EpisodeView], style: Style, width: Option<usize>) -> String {
    if eps.is_empty() {
        return "no stuck pairs\n".into();
    }
    let mut t = Table::new(&[
        ("ID", true),
        ("A (stuck sender)", false),
        ("B (peer)", false),
        ("STUCK", true),
        ("AGE", true),
        ("DIAGNOSIS", false),
    ])
    .cuttable(&[1, 2]);
    let mut evidence = Vec::new();
    for e in eps {
        let (a, b) = end_cells(e);
        t.push(vec![
            e.id.to_string(),
            a,
            b.unwrap_or_else(|| format!("? {}", e.peer.a.remote)),
            human_bytes(u64::from(e.stuck)),
            age(e.duration_s),
            format!("{}{}", e.diagnosis, if e.open { "" } else { " (ended)" }),
        ]);
        evidence.push((e.id, e.summary.clone(), key_evidence(e), e.blame));
    }
    let mut out = t.render_within(width);
    out.push('\n');
    for (id, summary, ev, blame) in evidence {
        let _ = writeln!(out, "#{id}: {}", style.bad(&summary));
        let _ = writeln!(out, "     {}  (look at: {blame})", style.dim(&ev));
    }
    out
}

/// `tcpstall report`: each incident, its pairs beneath it.
pub fn report_incidents(
    eps: &[EpisodeView],
    incidents: &[IncidentView],
    style: Style,
    width: Option<usize>,
) -> String {
    if eps.is_empty() {
        return "no stuck pairs\n".into();
    }
    let mut out = String::new();
    for (n, i) in incidents.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{}",
            style.bad(&format!("Incident #{}: {}", i.id, i.title))
        );
        let until = i
            .ended_at
            .as_ref()
            .map(|e| format!(" until {e}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}",
            style.dim(&format!(
                "{}, {} stuck, since {}{until}",
                incident_state(i),
                human_bytes(i.stuck),
                i.started_at,
            ))
        );
        let members: Vec<EpisodeView> = i
            .episodes
            .iter()
            .filter_map(|id| eps.iter().find(|e| e.id == *id).cloned())
            .collect();
        // Indented by two: the pairs' table fits two columns less.
        for line in report(&members, style, width.map(|w| w.saturating_sub(2))).lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

fn incident_state(i: &IncidentView) -> String {
    if i.open {
        format!("open {}", age(i.duration_s))
    } else {
        format!("ended after {}", age(i.duration_s))
    }
}

/// `tcpstall incidents`: one line each.
pub fn incidents(incidents: &[IncidentView], width: Option<usize>) -> String {
    if incidents.is_empty() {
        return "no incidents\n".into();
    }
    let mut t = Table::new(&[
        ("ID", true),
        ("STARTED", false),
        ("STATE", false),
        ("PAIRS", true),
        ("STUCK", true),
        ("DIAGNOSIS", false),
        ("INCIDENT", false),
    ])
    .cuttable(&[6]);
    for i in incidents {
        t.push(vec![
            i.id.to_string(),
            i.started_at.clone(),
            incident_state(i),
            i.pairs.to_string(),
            human_bytes(i.stuck),
            i.diagnosis.clone(),
            i.title.clone(),
        ]);
    }
    t.render_within(width)
}

/// `tcpstall episodes`: the history, one line each.
pub fn episodes(eps: &[EpisodeView], width: Option<usize>) -> String {
    if eps.is_empty() {
        return "no episodes\n".into();
    }
    let mut t = Table::new(&[
        ("ID", true),
        ("STARTED", false),
        ("DURATION", true),
        ("STATE", false),
        ("A", false),
        ("B", false),
        ("STUCK", true),
        ("DIAGNOSIS", false),
    ])
    .cuttable(&[4, 5]);
    for e in eps {
        let (a, b) = end_cells(e);
        t.push(vec![
            e.id.to_string(),
            e.started_at.clone(),
            age(e.duration_s),
            if e.open {
                "open".into()
            } else {
                e.end_reason.clone().unwrap_or_else(|| "ended".into())
            },
            a,
            b.unwrap_or_else(|| "-".into()),
            human_bytes(u64::from(e.stuck)),
            e.diagnosis.clone(),
        ]);
    }
    t.render_within(width)
}

/// An end's line above `diff`'s table: host and its own 4-tuple, then
/// the same connection as the other end sees it, in the same order (this
/// end first), when a translation makes that differ.
fn end_line(side: &str, v: &EndView, other: Option<&EndView>, other_side: &str) -> String {
    let mut out = format!("{side} {} {} -> {}", v.host, v.local, v.remote);
    if let Some(seen) = v.as_seen_by(other).filter(|f| *f != v.flow) {
        let _ = write!(out, "  (as {other_side} sees it: {seen})");
    }
    out
}

/// `tcpstall diff`: both ends side by side, one row per fact.
pub fn diff(a: &EndView, b: Option<&EndView>, width: Option<usize>) -> String {
    let mut out = format!(
        "{}\n{}\n\n",
        end_line("A", a, b, "B"),
        b.map_or_else(
            || "B (not visible)".into(),
            |b| end_line("B", b, Some(a), "A")
        )
    );
    // An end never sampled has no numbers to show.
    let b = b.filter(|b| b.seen);
    let facts = facts(a.sample.as_ref(), b.and_then(|b| b.sample.as_ref()));
    let mut t = Table::new(&[
        ("FACT", false),
        ("A", true),
        ("B", true),
        ("WHAT IT MEANS", false),
    ]);
    for f in &facts {
        t.push(vec![
            f.name.to_string(),
            f.a.clone(),
            f.b.clone(),
            f.meaning.clone(),
        ]);
    }
    if width.is_none_or(|w| t.natural_width() <= w) {
        out.push_str(&t.render());
    } else {
        // Too wide for one line a fact: FACT, A and B on it (long values
        // cut), what they mean whole on the next.
        let mut t = Table::new(&[("FACT", false), ("A", true), ("B", true)]).cuttable(&[1, 2]);
        for f in &facts {
            t.push(vec![f.name.to_string(), f.a.clone(), f.b.clone()]);
        }
        let table = t.render_within(width);
        let mut lines = table.lines();
        if let Some(header) = lines.next() {
            let _ = writeln!(out, "{header}");
        }
        for (line, f) in lines.zip(&facts) {
            let _ = writeln!(out, "{line}");
            if !f.meaning.is_empty() {
                let _ = writeln!(out, "    → {}", f.meaning);
            }
        }
    }
    let _ = writeln!(out, "\nsource: {} (both ends)", a.source);
    out
}

/// `tcpstall show`: one episode with its evidence.
pub fn show(e: &EpisodeView, samples: usize, width: Option<usize>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "episode {}  {}  {}",
        e.id,
        e.diagnosis,
        if e.open { "open" } else { "ended" }
    );
    let _ = writeln!(out, "  {}", e.summary);
    let _ = writeln!(out, "  look at: {}", e.blame);
    let _ = writeln!(
        out,
        "  started {}  stuck {} for {}",
        e.started_at,
        human_bytes(u64::from(e.stuck)),
        age(e.duration_s)
    );
    if let Some(end) = &e.ended_at {
        let _ = writeln!(
            out,
            "  ended {end} ({})",
            e.end_reason.as_deref().unwrap_or("-")
        );
    }
    if let Some(note) = &e.peer_note {
        let _ = writeln!(out, "  peer: {note}");
    }
    let _ = writeln!(out, "  samples stored: {samples}");
    // The conntrack entry that joined the ends, and any other an end's
    // host holds for the connection.
    let via = e.via.as_ref();
    if let Some(v) = via {
        let how = if v.translation.entry.translated() {
            "NAT"
        } else {
            "conntrack"
        };
        let _ = writeln!(
            out,
            "  joined through {how} on {}: {}",
            v.host, v.translation.entry
        );
    }
    let ends = [("A", Some(&e.peer.a)), ("B", e.peer.b.as_ref())];
    for (side, end) in ends {
        let Some(end) = end else { continue };
        let Some(t) = &end.translation else { continue };
        if via.is_none_or(|v| v.translation != *t) {
            let _ = writeln!(out, "  {side}'s host {} translates: {}", end.host, t.entry);
        }
    }
    // The flow's key in Zeek, Suricata and Elastic data; one per end when
    // an address was translated between them.
    let a_id = &e.peer.a.community_id;
    match e.peer.b.as_ref().map(|b| &b.community_id) {
        Some(b_id) if b_id != a_id => {
            let _ = writeln!(out, "  community id: {a_id} (A), {b_id} (B)");
        }
        _ => {
            let _ = writeln!(out, "  community id: {a_id}");
        }
    }
    for (side, end) in ends {
        if let Some(c) = end.and_then(|end| end.container.as_ref()) {
            let _ = writeln!(out, "  {side} runs in {}", c.short());
        }
    }
    let _ = writeln!(out, "\nevidence:");
    for (k, v) in &e.evidence {
        let _ = writeln!(out, "  {k:<16} {v}");
    }
    if !e.rested_on.is_empty() {
        let _ = writeln!(out, "rests on: {}", e.rested_on.join(", "));
    }
    if !e.missing.is_empty() {
        let _ = writeln!(
            out,
            "without: {} (not given by this kernel or probe; see docs/kernels.md)",
            e.missing.join(", ")
        );
    }
    out.push('\n');
    out.push_str(&diff(&e.peer.a, e.peer.b.as_ref(), width));
    out
}
