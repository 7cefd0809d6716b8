//! Reading an endpoint back, as tests and benchmarks do: one blocking
//! `GET /metrics` over HTTP/1.1, and the samples of the text by series.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The body of `GET /metrics` at `addr`; an error when the endpoint does
/// not answer 200 with the text format within `timeout`.
pub fn scrape(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad(format!("not an HTTP reply: {reply:?}")))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(bad(format!("not 200: {head}")));
    }
    if !head
        .to_ascii_lowercase()
        .contains(&format!("content-type: {}", crate::CONTENT_TYPE))
    {
        return Err(bad(format!("not the text format: {head}")));
    }
    Ok(body.to_string())
}

/// Every sample of a scrape by its series (name and labels, as written).
pub fn series(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_read_by_name_and_labels() {
        let text = "# HELP a A.\n# TYPE a counter\na_total 3\nb{x=\"1\"} 2.5\nbad line\n";
        let s = series(text);
        assert_eq!(s.get("a_total"), Some(&3.0));
        assert_eq!(s.get("b{x=\"1\"}"), Some(&2.5));
        assert_eq!(s.len(), 2);
    }
}
