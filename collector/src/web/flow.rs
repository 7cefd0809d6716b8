//! The Flow page: any two endpoints, both ends side by side and live, as
//! `tcpstall diff --watch A B` shows them. Asking is a watch (the ends'
//! hosts are asked to report the flow every poll), so it is a POST: the
//! form posts to `/flow`, and the page's script posts to `/flow/live` every
//! 2 s for the fragment. A GET only shows the form.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use maud::{html, Markup};
use tcpstall_common::FlowTuple;
use tokio::sync::oneshot;

use super::ends::{self, End};
use super::{pages, Web};
use crate::matcher::{FlowView, Question};

/// How long the page waits for the collector's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// The two endpoints asked, checked; or what is wrong with which.
pub fn endpoints(form: &HashMap<String, String>) -> Result<FlowTuple, String> {
    let field = |name: &str, what: &str| -> Result<SocketAddr, String> {
        let v = form.get(name).map(|s| s.trim()).unwrap_or("");
        if v.is_empty() {
            return Err(format!("{what} ({name}) is missing: give ADDR:PORT"));
        }
        v.parse()
            .map_err(|_| format!("{what} ({name}) `{v}` is not ADDR:PORT (IPv6 as [ADDR]:PORT)"))
    };
    let a = field("a", "A, the sender")?;
    let b = field("b", "B, its peer")?;
    Ok(FlowTuple::new(a, b))
}

/// GET /flow: the form, filled from the query when it names endpoints.
pub fn form_page(q: &HashMap<String, String>) -> String {
    pages::layout(
        "Flow",
        Some("Flow"),
        html! {
            h1 { "Flow" }
            (form(q.get("a").map(String::as_str), q.get("b").map(String::as_str)))
        },
    )
}

fn form(a: Option<&str>, b: Option<&str>) -> Markup {
    html! {
        p.meta { "Both ends of any connection, side by side and live: each end's host is asked to report it every poll, as " code { "tcpstall diff --watch" } " does." }
        form.filters.flow method="post" action="/flow" {
            label { "A (ADDR:PORT) " input name="a" value=[a] placeholder="10.0.0.1:7000" required; }
            label { "B (ADDR:PORT) " input name="b" value=[b] placeholder="10.0.0.2:51844" required; }
            button type="submit" { "Watch" }
        }
    }
}

/// POST /flow: asks both ends' hosts to watch, and shows what is known,
/// updating by itself.
pub async fn watch_page(web: &Web, body: &HashMap<String, String>) -> (hyper::StatusCode, String) {
    let (a, b) = (body.get("a").map(String::as_str), body.get("b").map(String::as_str));
    let flow = match endpoints(body) {
        Ok(f) => f,
        // The form again, saying what is wrong: a page, as the sign-in's
        // refusal is (a script's POST to /flow/live gets a 400).
        Err(why) => {
            return (
                hyper::StatusCode::OK,
                pages::layout(
                    "Flow",
                    Some("Flow"),
                    html! { h1 { "Flow" } p.error role="alert" { (why) } (form(a, b)) },
                ),
            )
        }
    };
    let live = live(web, flow).await;
    (
        hyper::StatusCode::OK,
        pages::layout(
            &format!("Flow {flow}"),
            Some("Flow"),
            html! {
                h1 { "Flow " span.addr { (flow) } }
                (form(a, b))
                p #flow-status .status { "Watching; updates by itself every 2 s." }
                div #flow-live data-a=(flow.local) data-b=(flow.remote) { (live) }
            },
        ),
    )
}

/// POST /flow/live: the ends as known now (and the watch asked again, for
/// a host that reconnected meanwhile).
pub async fn live(web: &Web, flow: FlowTuple) -> Markup {
    let Some(questions) = &web.questions else {
        return html! { p.error { "This page's collector judges no flows." } };
    };
    let (reply, view) = oneshot::channel();
    let asked = questions.send(Question::Flow { flow, reply }).await.is_ok();
    let view = match asked {
        true => tokio::time::timeout(ANSWER_WAIT, view).await.ok().and_then(Result::ok),
        false => None,
    };
    let Some(FlowView { a, b }) = view else {
        return html! { p.error { "The collector did not answer in time; trying again." } };
    };
    // A first as asked, else B's report alone.
    let a_end = End {
        host: a.as_ref().map(|(h, _)| h.as_str()),
        flow,
        sample: a.as_ref().map(|(_, s)| s),
    };
    let b_end = End {
        host: b.as_ref().map(|(h, _)| h.as_str()),
        flow: b.as_ref().map_or(flow.reversed(), |(_, s)| s.flow),
        sample: b.as_ref().map(|(_, s)| s),
    };
    html! {
        @if a.is_none() && b.is_none() {
            p.empty { "No agent reports " (flow) " yet: both ends' hosts are asked to watch it; it shows at their next poll." }
        } @else {
            @if a.is_none() { p.note { "A (" (flow.local) ") is not reported by any agent." } }
            @if b.is_none() { p.note { "B (" (flow.remote) ") is not reported by any agent." } }
        }
        (ends::who(&a_end, &b_end, None))
        (ends::fact_table(&a_end, &b_end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(a: &str, b: &str) -> HashMap<String, String> {
        HashMap::from([("a".into(), a.into()), ("b".into(), b.into())])
    }

    #[test]
    fn endpoints_are_checked_and_a_bad_one_is_named() {
        let f = endpoints(&form(" 10.0.0.1:7000", "[fd00::2]:51844")).expect("both");
        assert_eq!(f.local.to_string(), "10.0.0.1:7000");
        assert_eq!(f.remote.to_string(), "[fd00::2]:51844");
        let e = endpoints(&form("10.0.0.1", "10.0.0.2:1")).expect_err("no port");
        assert!(e.starts_with("A, the sender (a) `10.0.0.1`"), "{e}");
        let e = endpoints(&form("10.0.0.1:1", "")).expect_err("no B");
        assert!(e.starts_with("B, its peer (b) is missing"), "{e}");
    }
}
