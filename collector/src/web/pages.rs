//! The pages, as maud templates: every `(value)` is escaped, so whatever
//! a host sent (its name, a command line, a unit) renders as text.

use std::collections::HashMap;

use maud::{html, Markup, PreEscaped, DOCTYPE};
use tcpstall_common::incident::{self, Member};
use tcpstall_common::record::{EpisodeFilter, EpisodeRow, EpisodeSample, StoredSample};
use tcpstall_plot::PlotInput;
use tcpstall_common::time::rfc3339;
use tcpstall_common::{Diagnosis, Side};

use super::chart;
use super::ends::{self, End};
use crate::gateway::AgentNow;
use super::{Rendered, Web};

pub const CSS: &str = include_str!("assets/app.css");
pub const JS: &str = include_str!("assets/app.js");

/// Episodes a History page lists.
const PAGE: u32 = 50;

/// Every page: the navigation, the title, the body.
pub(super) fn layout(title: &str, nav: Option<&str>, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tcpstall" }
                // No icon to fetch.
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                @if let Some(active) = nav {
                    nav {
                        span.brand { "tcpstall" }
                        @for (href, name) in [("/now", "Now"), ("/episodes", "History"), ("/flow", "Flow"), ("/hosts", "Hosts")] {
                            a href=(href) class=[(active == name).then_some("active")] { (name) }
                        }
                        form.signout method="post" action="/signout" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

pub fn sign_in(failed: bool, no_token: bool) -> String {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "tcpstall" }
            @if no_token {
                p { "This collector needs no token: " a href="/now" { "go to the stuck pairs" } "." }
            } @else {
                form.signin method="post" action="/signin" {
                    label for="token" { "Query token" }
                    input #token type="password" name="token" autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
                @if failed {
                    p.error role="alert" { "That is not this collector's query token." }
                }
            }
        },
    )
}

/// Too many wrong tokens this minute.
pub fn sign_in_later() -> String {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "tcpstall" }
            p.error role="alert" { "Too many wrong tokens in the last minute: sign-ins wait until it is out." }
            p { a href="/signin" { "Sign in" } }
        },
    )
}

pub fn not_found() -> String {
    layout("Not found", Some(""), html! { h1 { "Not found" } p { a href="/now" { "The stuck pairs now" } } })
}

pub fn failed(why: &str) -> String {
    layout(
        "Unavailable",
        Some(""),
        html! { h1 { "The store did not answer" } p.error { (why) } },
    )
}

/// An episode as grouping needs it: an open one lasts until `now_ms`.
fn member(e: &EpisodeRow, now_ms: i64) -> Member<'_> {
    Member {
        id: e.id,
        diagnosis: &e.diagnosis,
        a_host: &e.a_host,
        b_host: e.b_host.as_deref(),
        start_ms: e.started_at_ms,
        end_ms: Member::end_of(e.started_at_ms, e.duration_ms, e.open, now_ms),
        open: e.open,
        stuck: u64::from(e.stuck_bytes),
    }
}

async fn open_episodes(web: &Web) -> Result<Vec<EpisodeRow>, String> {
    web.store
        .list_episodes(super::open_episodes())
        .await
        .map_err(|e| e.to_string())
}

pub async fn now(web: &Web) -> Rendered {
    let eps = open_episodes(web).await?;
    Ok((
        hyper::StatusCode::OK,
        layout(
            "Now",
            Some("Now"),
            html! {
                h1 { "Stuck now" }
                p.status #live-status { "Updates by itself every 2 s." }
                div #live data-src="/now/live" { (incidents(&eps)) }
            },
        ),
    ))
}

/// The Now page's incidents alone, for its script to put in place.
pub async fn now_live(web: &Web) -> Rendered {
    let eps = open_episodes(web).await?;
    Ok((hyper::StatusCode::OK, incidents(&eps).into_string()))
}

fn incidents(eps: &[EpisodeRow]) -> Markup {
    let now = unix_now_ms();
    let members: Vec<Member<'_>> = eps.iter().map(|e| member(e, now)).collect();
    let grouped = incident::group(&members);
    html! {
        @if grouped.is_empty() {
            p.empty { "No stuck pairs." }
        }
        @for i in &grouped {
            section.incident data-incident=(i.id) data-pairs=(i.members.len()) {
                h2 { (i.title()) }
                p.meta {
                    (if i.open { "open " } else { "ended after " }) (age_ms(i.end_ms - i.start_ms))
                    ", " span data-bytes=(i.stuck) { (bytes(i.stuck)) } " stuck, since "
                    time datetime=(rfc3339(i.start_ms)) { (rfc3339(i.start_ms)) }
                }
                div.scroll {
                    table.pairs {
                        thead { tr { th { "Episode" } th { "A (stuck sender)" } th { "B (peer)" } th.num { "Stuck" } th.num { "Age" } th { "Diagnosis" } } }
                        tbody {
                            @for &m in &i.members {
                                (pair_row(&eps[m]))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn pair_row(e: &EpisodeRow) -> Markup {
    html! {
        tr.pair data-episode=(e.id) {
            td { a href={ "/episodes/" (e.id) } { "#" (e.id) } }
            td.end { span.host { (e.a_host) } " " span.addr { (e.a_flow.local) } }
            td.end {
                @match &e.b_host {
                    Some(b) => { span.host { (b) } " " }
                    None => { span.host.unknown { "?" } " " }
                }
                span.addr { (e.a_flow.remote) }
            }
            td.num data-bytes=(e.stuck_bytes) { (bytes(u64::from(e.stuck_bytes))) }
            td.num { (age_ms(lasted_ms(e))) }
            td { span.diagnosis { (e.diagnosis) } @if !e.open { " (ended)" } }
        }
        tr.summary { td colspan="6" { (e.summary) } }
    }
}

/// The History page's filters, from its query.
struct HistoryQuery<'a> {
    since: &'a str,
    diagnosis: Option<&'a str>,
    state: &'a str,
    host: Option<&'a str>,
    filter: EpisodeFilter,
}

/// The filters asked, or what is wrong with them.
fn history_query(q: &HashMap<String, String>) -> Result<HistoryQuery<'_>, String> {
    let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let since = get("since").unwrap_or("24h");
    let since_ms = match since {
        "all" => None,
        s => match tcpstall_common::duration::parse(s) {
            Ok(d) => Some(unix_now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => return Err(format!("since: {e}")),
        },
    };
    let diagnosis = get("diagnosis").filter(|d| Diagnosis::from_id(d).is_some());
    let state = get("state").unwrap_or("all");
    let host = get("host");
    let after = get("after").and_then(|a| {
        let (t, id) = a.split_once('.')?;
        Some((t.parse().ok()?, id.parse().ok()?))
    });
    let filter = EpisodeFilter {
        since_ms,
        host: host.map(str::to_string),
        diagnosis: diagnosis.map(str::to_string),
        open_only: state == "open",
        limit: PAGE,
        after,
    };
    Ok(HistoryQuery {
        since,
        diagnosis,
        state,
        host,
        filter,
    })
}

/// `/episodes/chart.svg`: the History page's chart, for its filters.
pub async fn history_chart(web: &Web, q: &HashMap<String, String>) -> Result<(hyper::StatusCode, String), String> {
    match history_query(q) {
        Ok(h) => {
            let svg = chart::svg(web, h.filter, h.state == "ended", unix_now_ms()).await?;
            Ok((hyper::StatusCode::OK, svg))
        }
        Err(why) => Ok((hyper::StatusCode::BAD_REQUEST, why)),
    }
}

pub async fn history(web: &Web, q: &HashMap<String, String>) -> Rendered {
    let HistoryQuery {
        since,
        diagnosis,
        state,
        host,
        filter,
    } = match history_query(q) {
        Ok(h) => h,
        Err(why) => return Ok((hyper::StatusCode::BAD_REQUEST, layout("History", Some("History"), html! { h1 { "History" } p.error { (why) } }))),
    };
    let mut eps = web.store.list_episodes(filter).await.map_err(|e| e.to_string())?;
    let full = eps.len() == PAGE as usize;
    let last = eps.last().map(|e| (e.started_at_ms, e.id));
    if state == "ended" {
        eps.retain(|e| !e.open);
    }
    let mut next = format!("/episodes?since={since}&state={state}");
    if let Some(d) = diagnosis {
        next += &format!("&diagnosis={d}");
    }
    if let Some(h) = host {
        next += &format!("&host={}", encode(h));
    }
    Ok((
        hyper::StatusCode::OK,
        layout(
            "History",
            Some("History"),
            html! {
                h1 { "History" }
                form.filters method="get" action="/episodes" {
                    label { "Since " select name="since" {
                        @for (v, name) in [("1h", "1 hour"), ("24h", "24 hours"), ("7days", "7 days"), ("30days", "30 days"), ("all", "all")] {
                            option value=(v) selected[v == since] { (name) }
                        }
                    } }
                    label { "Diagnosis " select name="diagnosis" {
                        option value="" { "any" }
                        @for d in Diagnosis::ALL {
                            option value=(d.id()) selected[Some(d.id()) == diagnosis] { (d.id()) }
                        }
                    } }
                    label { "Host " input type="text" name="host" value=(host.unwrap_or("")); }
                    label { "State " select name="state" {
                        @for v in ["all", "open", "ended"] {
                            option value=(v) selected[v == state] { (v) }
                        }
                    } }
                    button type="submit" { "Filter" }
                }
                figure.chart {
                    img.chart src=(next.replacen("/episodes?", "/episodes/chart.svg?", 1)) width="1000" height="260"
                        alt="Episodes per diagnosis over the window, as stacked bars";
                }
                @if eps.is_empty() {
                    p.empty { "No episodes." }
                } @else {
                    div.scroll {
                        table.history {
                            thead { tr { th { "Episode" } th { "Started" } th.num { "Duration" } th { "State" } th { "A (stuck sender)" } th { "B (peer)" } th.num { "Stuck" } th { "Diagnosis" } } }
                            tbody {
                                @for e in &eps {
                                    tr.episode data-episode=(e.id) {
                                        td { a href={ "/episodes/" (e.id) } { "#" (e.id) } }
                                        td { time datetime=(rfc3339(e.started_at_ms)) { (rfc3339(e.started_at_ms)) } }
                                        td.num { (age_ms(lasted_ms(e))) }
                                        td { @if e.open { "open" } @else { (e.end_reason.as_deref().unwrap_or("ended")) } }
                                        td.end { span.host { (e.a_host) } " " span.addr { (e.a_flow.local) } }
                                        td.end { span.host { (e.b_host.as_deref().unwrap_or("?")) } " " span.addr { (e.a_flow.remote) } }
                                        td.num data-bytes=(e.stuck_bytes) { (bytes(u64::from(e.stuck_bytes))) }
                                        td { span.diagnosis { (e.diagnosis) } }
                                    }
                                }
                            }
                        }
                    }
                }
                @if let (true, Some((t, id))) = (full, last) {
                    p.paging { a.older href={ (next) "&after=" (t) "." (id) } { "Older →" } }
                }
            },
        ),
    ))
}

pub async fn hosts(web: &Web) -> Rendered {
    let hosts = web.store.list_hosts().await.map_err(|e| e.to_string())?;
    let here: HashMap<String, AgentNow> = web
        .agents_here()
        .await
        .into_iter()
        .map(|a| (a.host.clone(), a))
        .collect();
    Ok((
        hyper::StatusCode::OK,
        layout(
            "Hosts",
            Some("Hosts"),
            html! {
                h1 { "Hosts" }
                @if hosts.is_empty() {
                    p.empty { "No agent has said hello." }
                } @else {
                    p.meta { "Probes, poll and drops are of the agents streaming to this collector now." }
                    div.scroll {
                        table.hosts {
                            thead { tr {
                                th { "Host" } th { "Agent" } th { "Last seen" } th { "Version" } th { "Kernel" }
                                th { "Probes" } th.num { "Poll" } th.num { abbr title="Batches the agent dropped since it started (its queue to the collector was full)" { "Dropped" } }
                            } }
                            tbody {
                                @for h in &hosts {
                                    @let now = here.get(&h.host);
                                    tr.host data-host=(h.host) {
                                        td { (h.host) }
                                        td { @if h.connected { "connected" } @else { "gone" } }
                                        td { time datetime=(rfc3339(h.last_seen_ms)) { (rfc3339(h.last_seen_ms)) } }
                                        td { (h.agent_version) }
                                        td { (h.kernel) }
                                        td.probes { (now.map_or_else(|| "-".into(), |a| probes(a.probes))) }
                                        td.num { (now.map_or_else(|| "-".into(), |a| tcpstall_common::duration::format(a.interval))) }
                                        td.num.dropped { (now.map_or_else(|| "-".into(), |a| a.dropped_batches.to_string())) }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        ),
    ))
}

/// The probes that work on a host, by name: `sock_diag, bpf_iter`.
fn probes(p: tcpstall_common::ProbeSet) -> String {
    let names: Vec<&str> = [
        (p.sock_diag, "sock_diag"),
        (p.bpf_iter, "bpf_iter"),
        (p.getsockopt, "getsockopt"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

pub async fn episode(web: &Web, id: i64) -> Rendered {
    let Some((e, samples)) = web.store.get_episode(id).await.map_err(|e| e.to_string())? else {
        return Ok((hyper::StatusCode::NOT_FOUND, not_found()));
    };
    let blame = Diagnosis::from_id(&e.diagnosis).map_or("unknown", Diagnosis::blame);
    let ended = e.ended_at_ms.filter(|&ms| !e.open && ms > 0);
    // Each end as its latest sample has it (`diff` of an episode).
    let latest = |side: Side| {
        samples
            .iter()
            .rev()
            .filter(|s| s.side == side)
            .find_map(|s| Some((s.host.as_str(), tcpstall_proto::convert::unpack(&s.sample)?)))
    };
    let (a_latest, b_latest) = (latest(Side::A), latest(Side::B));
    let a = End {
        host: Some(&e.a_host),
        flow: e.a_flow,
        sample: a_latest.as_ref().map(|(_, s)| s),
    };
    let b = End {
        host: e.b_host.as_deref().or(b_latest.as_ref().map(|(h, _)| *h)),
        // B's own addresses, which differ from A's reversed behind a NAT.
        flow: b_latest.as_ref().map_or(e.a_flow.reversed(), |(_, s)| s.flow),
        sample: b_latest.as_ref().map(|(_, s)| s),
    };
    let picture = plot(&e, &samples).ok();
    Ok((
        hyper::StatusCode::OK,
        layout(
            &format!("Episode {id}"),
            Some(""),
            html! {
                h1 { "Episode #" (e.id) ": " span.diagnosis { (e.diagnosis) } }
                p.summary { (e.summary) }
                p { "Look at: " strong.blame { (blame) } }
                (ends::who(&a, &b, Some(e.stuck_bytes)))
                @if let Some(note) = &e.peer_note {
                    p.note { (note) }
                }
                @if let Some(via) = &e.via {
                    p.via { "Joined through " (via.host) "'s connection tracking: " (via.translation.original) " ⇄ " (via.translation.reply) }
                }
                h2 { "When" }
                dl.when {
                    dt { "Started" } dd { time datetime=(rfc3339(e.started_at_ms)) { (rfc3339(e.started_at_ms)) } }
                    dt { "Duration" } dd.duration data-ms=(e.duration_ms) { (age_ms(lasted_ms(&e))) }
                    @if let Some(ms) = ended {
                        dt { "Ended" } dd { (rfc3339(ms)) " (" (e.end_reason.as_deref().unwrap_or("ended")) ")" }
                    } @else {
                        dt { "State" } dd { "open" }
                    }
                }
                h2 { "Evidence" }
                div.scroll {
                    table.evidence {
                        tbody {
                            @for (k, v) in &e.evidence {
                                tr.rested[e.basis.rested_on.contains(k)] { th { (k) } td.num data-name=(k) { (v) } }
                            }
                        }
                    }
                }
                @if !e.basis.rested_on.is_empty() {
                    p.basis { "The diagnosis rests on " (e.basis.rested_on.join(", ")) " (in bold above)." }
                }
                @if !e.basis.missing.is_empty() {
                    p.basis.missing { "It went without " (e.basis.missing.join(", ")) ": the hosts' kernels or probes do not give them (docs/kernels.md)." }
                }
                @if let Some(svg) = picture {
                    h2 { "The stall, in the byte stream" }
                    // Our own SVG, every text in it escaped by the plot
                    // crate: inline, so that its values show on hover.
                    figure.plot {
                        (PreEscaped(svg))
                        figcaption #plot-readout aria-live="polite" { "Point at the picture for every value at that time." }
                    }
                    p.meta { a href={ "/episodes/" (e.id) "/plot.svg" } { "The picture as SVG" } }
                }
                h2 { "Both ends, fact by fact" }
                p.meta { "Each end's latest sample, as " code { "tcpstall diff " (e.id) } " shows them." }
                (ends::fact_table(&a, &b))
                p { (samples.len()) " samples stored. " a href={ "/episodes/" (e.id) ".json" } { "This episode as JSON" } }
            },
        ),
    ))
}

/// Size of the picture, pixels (as `tcpstall plot` draws it).
const PLOT: (u32, u32) = (1000, 600);

/// The episode's time–sequence picture, SVG.
fn plot(e: &EpisodeRow, samples: &[StoredSample]) -> Result<String, String> {
    let decoded: Vec<EpisodeSample> = samples
        .iter()
        .filter_map(|s| {
            Some(EpisodeSample {
                side: s.side,
                host: s.host.clone(),
                at_ms: s.at_ms,
                sample: tcpstall_proto::convert::unpack(&s.sample)?,
            })
        })
        .collect();
    let episode = e.clone().answer(unix_now_ms());
    tcpstall_plot::render_svg(&PlotInput::of_episode(&episode, &decoded), PLOT.0, PLOT.1)
        .map_err(|e| e.to_string())
}

/// `/episodes/ID/plot.svg`: the picture, or why there is none.
pub async fn episode_plot(web: &Web, id: i64) -> Result<Option<Result<String, String>>, String> {
    let Some((e, samples)) = web.store.get_episode(id).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    Ok(Some(plot(&e, &samples)))
}

/// An episode as the page's JSON: what the page shows.
#[derive(serde::Serialize)]
struct EpisodeJson<'a> {
    id: i64,
    diagnosis: &'a str,
    open: bool,
    started_at: String,
    ended_at: Option<String>,
    duration_s: f64,
    stuck: u32,
    summary: &'a str,
    blame: &'static str,
    peer_note: Option<&'a str>,
    end_reason: Option<&'a str>,
    evidence: &'a std::collections::BTreeMap<String, i64>,
    a_host: &'a str,
    a_local: String,
    a_remote: String,
    b_host: Option<&'a str>,
    samples: usize,
}

pub async fn episode_json(web: &Web, id: i64) -> Result<Option<String>, String> {
    let Some((e, samples)) = web.store.get_episode(id).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let j = EpisodeJson {
        id: e.id,
        diagnosis: &e.diagnosis,
        open: e.open,
        started_at: rfc3339(e.started_at_ms),
        ended_at: e.ended_at_ms.filter(|&ms| !e.open && ms > 0).map(rfc3339),
        duration_s: lasted_ms(&e) as f64 / 1000.0,
        stuck: e.stuck_bytes,
        summary: &e.summary,
        blame: Diagnosis::from_id(&e.diagnosis).map_or("unknown", Diagnosis::blame),
        peer_note: e.peer_note.as_deref(),
        end_reason: e.end_reason.as_deref(),
        evidence: &e.evidence,
        a_host: &e.a_host,
        a_local: e.a_flow.local.to_string(),
        a_remote: e.a_flow.remote.to_string(),
        b_host: e.b_host.as_deref(),
        samples: samples.len(),
    };
    serde_json::to_string_pretty(&j).map(Some).map_err(|e| e.to_string())
}

/// How long an episode lasted, or has lasted so far while open (its
/// stored length is as of its last update).
fn lasted_ms(e: &EpisodeRow) -> i64 {
    let stored = i64::try_from(e.duration_ms).unwrap_or(i64::MAX);
    if e.open {
        stored.max(unix_now_ms().saturating_sub(e.started_at_ms))
    } else {
        stored
    }
}

fn unix_now_ms() -> i64 {
    tcpstall_common::time::unix_ms(std::time::SystemTime::now())
}

/// `s` for a URL's query.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Bytes for people: 4.9 KiB.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A length of time for people: 45s, 12m, 3h.
fn age_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_for_people() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(324_352), "316.8 KiB");
        assert_eq!(age_ms(119_999), "119s");
        assert_eq!(age_ms(7_200_000), "2h");
        assert_eq!(encode("db 7/<x>"), "db%207%2F%3Cx%3E");
    }
}
