//! The web page (`--web-listen`): the stuck pairs now, grouped into
//! incidents and updating by themselves; the episodes' history; each
//! episode; the hosts.
//!
//! Server-rendered HTML ([`pages`], maud templates: checked when the
//! collector is compiled, every value escaped, so a host name or a command
//! line is text and never markup), one stylesheet and one script inside the
//! binary, nothing fetched from elsewhere; a Content-Security-Policy that
//! allows only those. Guarded as the query API is: with a query token set,
//! nothing but the sign-in page and the assets is served without it, given
//! at sign-in (a session cookie, HttpOnly and SameSite=Strict) or as
//! `authorization: Bearer TOKEN`. Served over TLS when the collector has a
//! certificate. Nothing here changes anything but the Flow page's watch:
//! every page is a GET, and the only POSTs sign in and out and ask agents
//! to watch a flow ([`flow`]); a POST from another site is refused.

mod chart;
mod ends;
mod flow;
mod pages;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::Read as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tcpstall_common::record::EpisodeFilter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::gateway;
use crate::matcher::Question;
use crate::store::SharedStore;

/// What every answer carries: only this origin's script and style, no
/// frames, no forms elsewhere, no referrer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// How long a sign-in lasts.
const SESSION_LIFE: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most: the oldest go first beyond it.
const MAX_SESSIONS: usize = 1024;
/// The largest request body read (a sign-in form).
const MAX_BODY: usize = 4096;
/// The session cookie's name.
const COOKIE: &str = "tcpstall_session";
/// Open episodes the Now page groups at most.
pub const NOW_LIMIT: u32 = 5000;

/// Connections served at once; more are closed at once (and counted).
const MAX_CONNECTIONS: usize = 256;

/// The web page's state: where the episodes are, who may look.
pub struct Web {
    pub store: SharedStore,
    access: Access,
    /// Served over TLS (the cookie is then `Secure`).
    pub tls: bool,
    slots: Arc<tokio::sync::Semaphore>,
    /// Connections closed because [`MAX_CONNECTIONS`] were open.
    refused: AtomicU64,
    /// The collector's judging role, for the Flow page; `None` serves the
    /// store alone.
    questions: Option<tokio::sync::mpsc::Sender<Question>>,
    /// This process's gateway, for the Hosts page's live columns.
    gateway: Option<tokio::sync::mpsc::Sender<gateway::Input>>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("token", &self.access.token.is_some())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Web {
    /// `token`: the query token, when one is set.
    pub fn new(store: SharedStore, token: Option<String>, tls: bool) -> Web {
        Web {
            store,
            access: Access {
                token: token.map(Arc::from),
                sessions: Mutex::new(HashMap::new()),
                wrong: Mutex::new((Instant::now(), 0)),
            },
            tls,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            refused: AtomicU64::new(0),
            questions: None,
            gateway: None,
        }
    }

    /// The agents streaming to this process now (none without a gateway,
    /// or when it does not answer within a second).
    async fn agents_here(&self) -> Vec<gateway::AgentNow> {
        let Some(g) = &self.gateway else {
            return Vec::new();
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if g.send(gateway::Input::Agents { reply }).await.is_err() {
            return Vec::new();
        }
        tokio::time::timeout(Duration::from_secs(1), answer)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    /// With the collector's running parts: its matcher (or fleet node),
    /// asked for flows, and its gateway, asked for the agents connected.
    pub fn with_collector(
        mut self,
        questions: tokio::sync::mpsc::Sender<Question>,
        gateway: tokio::sync::mpsc::Sender<gateway::Input>,
    ) -> Web {
        self.questions = Some(questions);
        self.gateway = Some(gateway);
        self
    }
}

/// Wrong tokens taken in a minute; beyond, every sign-in is refused until
/// the minute is out (guessing a token is then 10 tries a minute; a
/// script with the token in its header is not slowed).
const WRONG_PER_MINUTE: u32 = 10;

/// Who may look: the token, and the sessions signed in with it.
struct Access {
    token: Option<Arc<str>>,
    sessions: Mutex<HashMap<String, Instant>>,
    /// This minute's start and its wrong tokens.
    wrong: Mutex<(Instant, u32)>,
}

/// How a sign-in went.
#[derive(Debug, PartialEq, Eq)]
enum SignIn {
    /// A new session's id.
    In(String),
    Wrong,
    /// Too many wrong tokens this minute: not even looked at.
    Later,
}

impl Access {
    /// Whether `req` may see the pages.
    fn allows(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|b| same(b.as_bytes(), token.as_bytes())) {
            return true;
        }
        let Some(id) = cookie(req, COOKIE) else {
            return false;
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&id) {
            Some(at) if at.elapsed() < SESSION_LIFE => true,
            Some(_) => {
                sessions.remove(&id);
                false
            }
            None => false,
        }
    }

    /// A new session for a correct token, at `now`.
    fn sign_in(&self, given: &str, now: Instant) -> SignIn {
        let Some(token) = self.token.as_ref() else {
            return SignIn::Wrong;
        };
        {
            let mut wrong = self.wrong.lock().unwrap_or_else(|p| p.into_inner());
            if now.saturating_duration_since(wrong.0) >= Duration::from_secs(60) {
                *wrong = (now, 0);
            }
            if wrong.1 >= WRONG_PER_MINUTE {
                return SignIn::Later;
            }
            if !same(given.as_bytes(), token.as_bytes()) {
                wrong.1 += 1;
                if wrong.1 == WRONG_PER_MINUTE {
                    tracing::warn!("web: {WRONG_PER_MINUTE} wrong tokens within a minute; sign-ins refused until it is out");
                }
                return SignIn::Wrong;
            }
        }
        let Some(id) = session_id() else {
            return SignIn::Wrong;
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, at| at.elapsed() < SESSION_LIFE);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), now);
        SignIn::In(id)
    }

    fn sign_out(&self, req: &Request<Incoming>) {
        if let Some(id) = cookie(req, COOKIE) {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }
}

/// Equal in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 128 random bits, in hex.
fn session_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn cookie(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Serves the page on `listener` (plain TCP) until `shutdown` completes.
pub async fn serve(listener: TcpListener, web: Arc<Web>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "web: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        connection(stream, web.clone());
    }
}

/// Serves the page over TLS: on the connections `accepted` hands over
/// (handshakes done, refusals counted there).
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    refused: Arc<AtomicU64>,
    web: Arc<Web>,
) {
    let mut accepted = crate::tls::accept(listener, tls, refused);
    while let Some(stream) = accepted.recv().await {
        match stream {
            Ok(s) => connection(s, web.clone()),
            Err(error) => tracing::debug!(%error, "web: TLS connection failed"),
        }
    }
}

fn connection<S>(stream: S, web: Arc<Web>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(slot) = web.slots.clone().try_acquire_owned() else {
        let n = web.refused.fetch_add(1, Ordering::Relaxed) + 1;
        // Said at the first and then at every power of two: a flood of
        // connections does not flood the log.
        if n.is_power_of_two() {
            tracing::warn!(refused = n, "web: {MAX_CONNECTIONS} connections open; closing new ones");
        }
        return;
    };
    tokio::spawn(async move {
        let _slot = slot;
        let service = service_fn(move |req| answer(req, web.clone()));
        if let Err(error) = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(%error, "web: connection ended");
        }
    });
}

type Answer = Response<Full<Bytes>>;

async fn answer(req: Request<Incoming>, web: Arc<Web>) -> Result<Answer, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    if method == Method::POST && cross_site(&req) {
        return Ok(secured(text(
            StatusCode::FORBIDDEN,
            "a POST from another site is refused\n",
        )));
    }
    let res = match (&method, path.as_str()) {
        (&Method::GET, "/static/app.css") => asset("text/css; charset=utf-8", pages::CSS),
        (&Method::GET, "/static/app.js") => asset("text/javascript; charset=utf-8", pages::JS),
        // Asked for by a browser showing the JSON: there is none.
        (&Method::GET, "/favicon.ico") => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        (&Method::GET, "/signin") => html(
            StatusCode::OK,
            pages::sign_in(query == "failed", web.access.token.is_none()),
        ),
        (&Method::POST, "/signin") => sign_in(req, &web).await,
        (&Method::POST, "/signout") => {
            web.access.sign_out(&req);
            let mut r = redirect("/signin");
            set_cookie(&mut r, &format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
            r
        }
        _ if !web.access.allows(&req) => {
            // A page goes to the sign-in; what a page loads (its live
            // part, a picture, JSON) is refused.
            let loaded = path.ends_with(".json") || path.ends_with(".svg") || path == "/now/live";
            if method == Method::GET && !loaded {
                redirect("/signin")
            } else {
                text(StatusCode::UNAUTHORIZED, "sign in, or give authorization: Bearer TOKEN\n")
            }
        }
        (&Method::GET, "/") => redirect("/now"),
        (&Method::GET, "/now") => page(pages::now(&web).await),
        (&Method::GET, "/now/live") => page(pages::now_live(&web).await),
        (&Method::GET, "/episodes") => page(pages::history(&web, &params(&query)).await),
        (&Method::GET, "/episodes/chart.svg") => match pages::history_chart(&web, &params(&query)).await {
            Ok((StatusCode::OK, svg)) => with_type(StatusCode::OK, "image/svg+xml", svg),
            Ok((status, why)) => text(status, &format!("{why}\n")),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
        },
        (&Method::GET, "/hosts") => page(pages::hosts(&web).await),
        (&Method::GET, "/flow") => html(StatusCode::OK, flow::form_page(&params(&query))),
        (&Method::POST, "/flow") => match form_body(req).await {
            Ok(form) => {
                let (status, body) = flow::watch_page(&web, &form).await;
                html(status, body)
            }
            Err(r) => r,
        },
        (&Method::GET, "/flow/live") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "asking for a flow asks its hosts to watch it: POST a=ADDR:PORT&b=ADDR:PORT\n",
        ),
        (&Method::POST, "/flow/live") => match form_body(req).await {
            Ok(form) => match flow::endpoints(&form) {
                Ok(f) => html(StatusCode::OK, flow::live(&web, f).await.into_string()),
                Err(why) => text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
            },
            Err(r) => r,
        },
        (&Method::GET, p) if p.starts_with("/episodes/") => {
            let rest = &p["/episodes/".len()..];
            if let Some(id) = rest.strip_suffix("/plot.svg") {
                return Ok(secured(match id.parse::<i64>() {
                    Ok(id) => match pages::episode_plot(&web, id).await {
                        Ok(Some(Ok(svg))) => with_type(StatusCode::OK, "image/svg+xml", svg),
                        Ok(Some(Err(why))) => text(StatusCode::NOT_FOUND, &format!("no picture: {why}\n")),
                        Ok(None) => text(StatusCode::NOT_FOUND, "no such episode\n"),
                        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
                    },
                    Err(_) => text(StatusCode::NOT_FOUND, "no such episode\n"),
                }));
            }
            match rest.strip_suffix(".json") {
                Some(id) => match id.parse::<i64>() {
                    Ok(id) => json(pages::episode_json(&web, id).await),
                    Err(_) => text(StatusCode::NOT_FOUND, "no such episode\n"),
                },
                None => match rest.parse::<i64>() {
                    Ok(id) => page(pages::episode(&web, id).await),
                    Err(_) => html(StatusCode::NOT_FOUND, pages::not_found()),
                },
            }
        }
        (&Method::GET, _) => html(StatusCode::NOT_FOUND, pages::not_found()),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET, and POST to sign in or out or to watch a flow\n",
        ),
    };
    Ok(secured(res))
}

/// Every answer's headers: the policy, no sniffing, no referrer, no cache.
fn secured(mut res: Answer) -> Answer {
    let h = res.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    res
}

/// A page or a failure to read what it shows.
type Rendered = Result<(StatusCode, String), String>;

fn page(r: Rendered) -> Answer {
    match r {
        Ok((status, body)) => html(status, body),
        Err(e) => {
            tracing::warn!(error = %e, "web: a page could not be made");
            html(StatusCode::SERVICE_UNAVAILABLE, pages::failed(&e))
        }
    }
}

fn json(r: Result<Option<String>, String>) -> Answer {
    match r {
        Ok(Some(body)) => with_type(StatusCode::OK, "application/json", body),
        Ok(None) => text(StatusCode::NOT_FOUND, "no such episode\n"),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
    }
}

/// A form's fields, from a body of at most [`MAX_BODY`] bytes.
async fn form_body(req: Request<Incoming>) -> Result<HashMap<String, String>, Answer> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(params(&String::from_utf8_lossy(&b.to_bytes()))),
        Err(_) => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a form here is at most {MAX_BODY} bytes\n"),
        )),
    }
}

/// Whether a request came from another site's page: the browser says so
/// (`Sec-Fetch-Site`), or its `Origin` is not this host. Requests that say
/// neither (curl, scripts with the token) are not a browser's.
fn cross_site(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return false;
    };
    let host = h.get(header::HOST).map(HeaderValue::as_bytes).unwrap_or_default();
    let origin = origin.as_bytes();
    let authority = origin
        .strip_prefix(b"https://")
        .or_else(|| origin.strip_prefix(b"http://"));
    authority != Some(host)
}

async fn sign_in(req: Request<Incoming>, web: &Web) -> Answer {
    let form = match form_body(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let given = form.get("token").map(String::as_str).unwrap_or("");
    match web.access.sign_in(given.trim(), Instant::now()) {
        SignIn::In(id) => {
            let mut r = redirect("/now");
            let secure = if web.tls { "; Secure" } else { "" };
            set_cookie(
                &mut r,
                &format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"),
            );
            r
        }
        // Back to the form, saying so (a page, not an error to load).
        SignIn::Wrong => redirect("/signin?failed"),
        SignIn::Later => html(
            StatusCode::TOO_MANY_REQUESTS,
            pages::sign_in_later(),
        ),
    }
}

fn asset(kind: &'static str, body: &'static str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

fn html(status: StatusCode, body: String) -> Answer {
    with_type(status, "text/html; charset=utf-8", body)
}

fn text(status: StatusCode, body: &str) -> Answer {
    with_type(status, "text/plain; charset=utf-8", body.to_string())
}

fn with_type(status: StatusCode, kind: &'static str, body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

fn redirect(to: &'static str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

fn set_cookie(r: &mut Answer, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
}

/// `a=1&b=x+y%21` decoded; the last of a repeated name wins.
fn params(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding, `+` as a space; a malformed escape stays as it is.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The store's filter for the Now page: every open episode, up to
/// [`NOW_LIMIT`].
fn open_episodes() -> EpisodeFilter {
    EpisodeFilter {
        open_only: true,
        limit: NOW_LIMIT,
        ..EpisodeFilter::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_string_decodes_and_a_bad_escape_stays() {
        let p = params("host=db%2D7&diagnosis=peer_not_reading&q=a+b&bad=%zz&cut=%4");
        assert_eq!(p["host"], "db-7");
        assert_eq!(p["q"], "a b");
        assert_eq!(p["bad"], "%zz");
        assert_eq!(p["cut"], "%4");
        assert!(params("").is_empty());
    }

    #[test]
    fn wrong_tokens_beyond_ten_a_minute_stop_sign_ins_until_it_is_out() {
        let access = Access {
            token: Some(Arc::from("secret")),
            sessions: Mutex::new(HashMap::new()),
            wrong: Mutex::new((Instant::now(), 0)),
        };
        let t0 = Instant::now();
        assert!(matches!(access.sign_in("secret", t0), SignIn::In(_)));
        for _ in 0..WRONG_PER_MINUTE {
            assert_eq!(access.sign_in("guess", t0), SignIn::Wrong);
        }
        // Even the right one waits.
        assert_eq!(access.sign_in("secret", t0 + Duration::from_secs(59)), SignIn::Later);
        assert!(matches!(
            access.sign_in("secret", t0 + Duration::from_secs(60)),
            SignIn::In(_)
        ));
    }

    #[test]
    fn a_token_compares_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert_eq!(session_id().map(|s| s.len()), Some(32));
    }
}
