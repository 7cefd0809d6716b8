//! The collectors an agent may stream to, and the order it tries them in.
//!
//! The agent is given one or more collector URLs (`--collector`, repeated,
//! or a list in the file). Each URL's host is resolved again at every
//! round, so a DNS name with several addresses is several candidates and a
//! change in DNS is followed; an IP literal is one candidate. A candidate
//! ([`Target`]) keeps its URL: the link dials the address but speaks to the
//! URL, so TLS still checks the URL's name.
//!
//! [`Rotation`] walks the candidates round robin: every candidate is tried
//! once before any is tried twice, and a round that is used up is resolved
//! afresh. Each round is in a random order. Two reasons:
//! - agents given the same list spread over the nodes instead of all
//!   streaming to the first one;
//! - when a node dies, its agents move to the others at random rather than
//!   all to the node after it in the list, which would then carry twice
//!   its share.
//!
//! The candidate just tried never opens the next round, so an agent moving
//! off a node it lost always tries another node first when there is one.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use tonic::codegen::http::Uri;

/// One collector to try: the URL the agent was given and one of the
/// addresses its host resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.url, self.addr)
    }
}

/// The host and port a collector URL names (the scheme's port when it
/// names none).
pub fn host_port(url: &str) -> Result<(String, u16), String> {
    let uri: Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`{url}`: no host"))?;
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(p), _) => p,
        (None, Some("https")) => 443,
        (None, _) => 80,
    };
    // An IPv6 literal comes bracketed.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}

/// Resolves a host name to its addresses on the system's resolver
/// (`getaddrinfo`: /etc/hosts, DNS, as nsswitch.conf says).
pub async fn resolve(host: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host.as_str(), port))
        .await?
        .collect())
}

/// The candidates of the current round, and what was tried last.
#[derive(Debug)]
pub struct Rotation {
    urls: Vec<String>,
    /// Candidates not yet tried in this round, the next one last.
    round: Vec<Target>,
    last: Option<Target>,
    rng: fastrand::Rng,
}

impl Rotation {
    pub fn new(urls: Vec<String>) -> Rotation {
        Rotation::with_rng(urls, fastrand::Rng::new())
    }

    /// With a given random source (tests seed it).
    pub fn with_rng(urls: Vec<String>, rng: fastrand::Rng) -> Rotation {
        Rotation {
            urls,
            round: Vec::new(),
            last: None,
            rng,
        }
    }

    /// The URLs, as given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The next candidate to try, on the system's resolver.
    pub async fn next(&mut self) -> Result<Target, String> {
        self.next_with(resolve).await
    }

    /// The next candidate to try. When the round is used up, every URL's
    /// host name is resolved again with `lookup` (an IP literal is its
    /// own address; a URL that does not resolve is left out of the round,
    /// and said in the error when none does).
    pub async fn next_with<F, Fut>(&mut self, mut lookup: F) -> Result<Target, String>
    where
        F: FnMut(String, u16) -> Fut,
        Fut: Future<Output = std::io::Result<Vec<SocketAddr>>>,
    {
        if self.round.is_empty() {
            let mut round = Vec::new();
            let mut errors = Vec::new();
            for url in &self.urls {
                let resolved = match host_port(url) {
                    Ok((host, port)) => match host.parse::<IpAddr>() {
                        Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
                        Err(_) => lookup(host.clone(), port)
                            .await
                            .map_err(|e| format!("`{url}`: resolving {host}: {e}")),
                    },
                    Err(e) => Err(e),
                };
                match resolved {
                    Ok(addrs) if addrs.is_empty() => {
                        errors.push(format!("`{url}`: no address"));
                    }
                    Ok(addrs) => {
                        for addr in addrs {
                            let t = Target {
                                url: url.clone(),
                                addr,
                            };
                            // A name listed twice, or two URLs on one
                            // address: one candidate.
                            if !round.contains(&t) {
                                round.push(t);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "collector not resolved");
                        errors.push(e);
                    }
                }
            }
            if round.is_empty() {
                return Err(errors.join("; "));
            }
            self.rng.shuffle(&mut round);
            // Taken from the end: the candidate just tried goes first in
            // the vector, so that it is tried last in this round.
            if round.len() > 1 {
                if let Some(i) = round.iter().rposition(|t| Some(t) == self.last.as_ref()) {
                    let t = round.remove(i);
                    round.insert(0, t);
                }
            }
            self.round = round;
        }
        let next = self.round.pop().ok_or("no collector to try")?;
        self.last = Some(next.clone());
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    /// A resolver that knows the names in `zone`, and counts its calls.
    fn zone(
        zone: &HashMap<&'static str, Vec<SocketAddr>>,
        calls: &std::cell::Cell<usize>,
        host: String,
        port: u16,
    ) -> std::future::Ready<std::io::Result<Vec<SocketAddr>>> {
        calls.set(calls.get() + 1);
        std::future::ready(match zone.get(host.as_str()) {
            Some(addrs) => Ok(addrs
                .iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect()),
            None => Err(std::io::Error::other("no such name")),
        })
    }

    async fn take(r: &mut Rotation, z: &HashMap<&'static str, Vec<SocketAddr>>) -> Target {
        let calls = std::cell::Cell::new(0);
        r.next_with(|h, p| zone(z, &calls, h, p))
            .await
            .expect("a candidate")
    }

    #[tokio::test]
    async fn every_candidate_once_per_round_and_a_name_is_all_its_addresses() {
        let z = HashMap::from([
            ("c.example", vec![addr("10.0.0.1:0"), addr("10.0.0.2:0")]),
            ("d.example", vec![addr("[fd00::3]:0")]),
        ]);
        let urls = vec![
            "http://c.example:7786".to_string(),
            "https://d.example".to_string(),
            "http://10.0.0.9:7786".to_string(),
        ];
        for seed in 0..20 {
            let mut r = Rotation::with_rng(urls.clone(), fastrand::Rng::with_seed(seed));
            let mut round = Vec::new();
            for _ in 0..4 {
                round.push(take(&mut r, &z).await);
            }
            let mut addrs: Vec<String> = round.iter().map(|t| t.addr.to_string()).collect();
            addrs.sort();
            assert_eq!(
                addrs,
                [
                    "10.0.0.1:7786",
                    "10.0.0.2:7786",
                    "10.0.0.9:7786",
                    "[fd00::3]:443"
                ],
                "seed {seed}: each once, with the URL's port"
            );
            let d = round.iter().find(|t| t.addr.is_ipv6()).expect("d");
            assert_eq!(d.url, "https://d.example", "the URL is kept for TLS");
            // The next round starts with another than the last one tried.
            let last = round.last().cloned();
            assert_ne!(Some(take(&mut r, &z).await), last, "seed {seed}");
        }
    }

    #[tokio::test]
    async fn rounds_are_resolved_again_and_start_at_random() {
        let mut z = HashMap::from([("c.example", vec![addr("10.0.0.1:0")])]);
        let calls = std::cell::Cell::new(0);
        let mut r = Rotation::new(vec!["http://c.example:1".to_string()]);
        let t = r.next_with(|h, p| zone(&z, &calls, h, p)).await;
        assert_eq!(t.map(|t| t.addr), Ok(addr("10.0.0.1:1")));
        z.insert("c.example", vec![addr("10.0.0.7:0")]);
        let t = r.next_with(|h, p| zone(&z, &calls, h, p)).await;
        assert_eq!(t.map(|t| t.addr), Ok(addr("10.0.0.7:1")), "DNS followed");
        assert_eq!(calls.get(), 2, "once a round");

        // Over many agents, each of three nodes is tried first by some.
        let urls: Vec<String> = (1..=3).map(|i| format!("http://10.0.0.{i}:1")).collect();
        let mut first = std::collections::HashSet::new();
        for seed in 0..50 {
            let mut r = Rotation::with_rng(urls.clone(), fastrand::Rng::with_seed(seed));
            first.insert(take(&mut r, &z).await.addr);
        }
        assert_eq!(first.len(), 3, "{first:?}");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_skipped_and_said_when_none_does() {
        let z = HashMap::from([("c.example", vec![addr("10.0.0.1:0")])]);
        let mut r = Rotation::new(vec![
            "http://gone.example:1".to_string(),
            "http://c.example:1".to_string(),
        ]);
        for _ in 0..3 {
            assert_eq!(take(&mut r, &z).await.url, "http://c.example:1");
        }
        let calls = std::cell::Cell::new(0);
        let mut r = Rotation::new(vec!["http://gone.example:1".to_string()]);
        let err = r
            .next_with(|h, p| zone(&z, &calls, h, p))
            .await
            .expect_err("nothing resolves");
        assert!(
            err.contains("gone.example") && err.contains("no such name"),
            "{err}"
        );
    }

    #[test]
    fn host_and_port_of_a_url() {
        assert_eq!(
            host_port("https://[::1]:7786"),
            Ok(("::1".to_string(), 7786))
        );
        assert_eq!(host_port("http://c"), Ok(("c".to_string(), 80)));
        assert_eq!(host_port("https://c/"), Ok(("c".to_string(), 443)));
        assert!(host_port("http://:1").is_err());
    }
}
