//! A real headless Chromium for the web page's tests, driven through
//! WebDriver: Debian's `chromium` and `chromium-driver` (chromedriver),
//! started on a free port per test, with a profile of its own in a
//! temporary directory, ended when the [`Browser`] drops.
//!
//! The WebDriver protocol is JSON over HTTP/1.1 on loopback; this speaks
//! the little of it the tests need, one connection per command.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C WebDriver id key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Chromium and its driver are, or `None` when they are not
/// installed (the tests then say so and skip).
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.exists());
    Some((
        find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])?,
        find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])?,
    ))
}

/// Skips the test (returns) when Chromium or chromedriver is missing.
#[macro_export]
macro_rules! require_chromium {
    () => {
        if $crate::browser::installed().is_none() {
            eprintln!("SKIP: chromium and chromium-driver are not installed");
            return;
        }
    };
}

/// One browser session in a headless Chromium.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A session in a window `width` × `height` CSS pixels, its console
    /// kept for [`Browser::console`].
    pub fn start(width: u32, height: u32) -> Browser {
        let (chromium, driver) = installed().expect("chromium and chromium-driver installed");
        let port = crate::free_port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        crate::wait_for("chromedriver ready", Duration::from_secs(20), || {
            b.call("GET", "/status", None)
                .ok()
                .filter(|v| v["ready"] == true)
        });
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new",
                        // Root has no sandbox to give up; the tests run as root.
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--no-first-run",
                        "--disable-extensions",
                        "--disable-background-networking",
                        "--disable-component-update",
                        format!("--user-data-dir={}", b._profile.path().display()),
                        format!("--window-size={width},{height}"),
                    ],
                },
                "goog:loggingPrefs": { "browser": "ALL" },
            }}
        });
        let v = b
            .call("POST", "/session", Some(caps))
            .expect("a WebDriver session");
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    /// One WebDriver command: its `value`, or the error WebDriver named.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        // chromedriver may keep the connection open: read the head, then
        // as many bytes as it says (or to the end when it does not say).
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let (head_len, length) = loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("chromedriver closed the connection".into());
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                break (at + 4, length);
            }
        };
        match length {
            Some(len) => {
                while raw.len() < head_len + len {
                    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
            }
            None => {
                s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
            }
        }
        let head = String::from_utf8_lossy(&raw[..head_len]).to_ascii_lowercase();
        let body = String::from_utf8_lossy(&raw[head_len..]);
        let body = if head.contains("transfer-encoding: chunked") {
            unchunk(&body)
        } else {
            body.into_owned()
        };
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if let Some(err) = value.get("error").and_then(Value::as_str) {
            return Err(format!(
                "{err}: {}",
                value["message"].as_str().unwrap_or("")
            ));
        }
        Ok(value)
    }

    fn session_call(&self, method: &str, what: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{what}", self.session), body)
    }

    /// Opens `url` and waits for its load.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The page's address now.
    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The page's HTML now.
    pub fn source(&self) -> String {
        self.session_call("GET", "/source", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Every element `css` selects, as references.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        self.session_call(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
        .collect()
    }

    /// The first element `css` selects.
    pub fn find(&self, css: &str) -> Option<String> {
        self.find_all(css).into_iter().next()
    }

    /// An element's rendered text.
    pub fn text(&self, el: &str) -> String {
        self.session_call("GET", &format!("/element/{el}/text"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// An element's attribute.
    pub fn attr(&self, el: &str, name: &str) -> Option<String> {
        self.session_call("GET", &format!("/element/{el}/attribute/{name}"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    }

    pub fn click(&self, el: &str) {
        self.session_call("POST", &format!("/element/{el}/click"), Some(json!({})))
            .unwrap_or_else(|e| panic!("click: {e}"));
    }

    /// Moves the pointer over the middle of an element (scrolled into
    /// view first), as a person's mouse would.
    pub fn hover(&self, el: &str) {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({
                "script": "arguments[0].scrollIntoView({block: 'center'}); return null;",
                "args": [reference(el)],
            })),
        )
        .unwrap_or_else(|e| panic!("scroll: {e}"));
        let origin = reference(el);
        self.session_call(
            "POST",
            "/actions",
            Some(json!({ "actions": [{
                "type": "pointer",
                "id": "mouse",
                "parameters": { "pointerType": "mouse" },
                "actions": [{ "type": "pointerMove", "duration": 0, "origin": origin, "x": 0, "y": 0 }],
            }] })),
        )
        .unwrap_or_else(|e| panic!("hover: {e}"));
    }

    pub fn type_into(&self, el: &str, text: &str) {
        self.session_call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .unwrap_or_else(|e| panic!("type: {e}"));
    }

    /// Runs `js` (a function body) in the page; its return value.
    pub fn script(&self, js: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )
        .unwrap_or_else(|e| panic!("script: {e}"))
    }

    /// Resizes the window (CSS pixels).
    pub fn resize(&self, width: u32, height: u32) {
        self.session_call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .unwrap_or_else(|e| panic!("resize: {e}"));
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let b64 = self
            .session_call("GET", "/screenshot", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        base64(&b64)
    }

    /// A PNG of one element as the browser draws it.
    pub fn element_screenshot(&self, el: &str) -> Vec<u8> {
        let b64 = self
            .session_call("GET", &format!("/element/{el}/screenshot"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        base64(&b64)
    }

    /// Saves a PNG of the page as `DIR/name.png` when
    /// `TCPSTALL_SCREENSHOTS=DIR` is set (how docs/web's pictures are
    /// made); checks it is a picture with something on it either way.
    pub fn keep_screenshot(&self, name: &str) {
        let png = self.screenshot();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 2000,
            "{name}: no picture of the page ({} bytes)",
            png.len()
        );
        if let Some(dir) = std::env::var_os("TCPSTALL_SCREENSHOTS") {
            let path = std::path::Path::new(&dir).join(format!("{name}.png"));
            std::fs::write(&path, &png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }

    /// The errors among what the pages wrote to the console since the
    /// last look (level SEVERE: a script's error, a resource refused).
    pub fn console_errors(&self) -> Vec<Value> {
        self.console()
            .into_iter()
            .filter(|l| l["level"] == "SEVERE")
            .collect()
    }

    /// What the page wrote to its console (errors included: a script that
    /// threw, a policy that refused something), since the last call.
    pub fn console(&self) -> Vec<Value> {
        self.session_call("POST", "/se/log", Some(json!({ "type": "browser" })))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for `probe` to give something.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; the page:\n{}",
                self.source()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Standard base64, padding optional.
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// How WebDriver names an element in arguments: `{ELEMENT: id}`.
fn reference(el: &str) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(ELEMENT.to_string(), Value::from(el));
    Value::Object(m)
}

/// How many distinct colours a PNG has (counted up to 1,000): a blank or
/// one-colour picture has one or two.
pub fn colours(png_bytes: &[u8]) -> usize {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let Ok(mut reader) = decoder.read_info() else {
        return 0;
    };
    let Some(size) = reader.output_buffer_size() else {
        return 0;
    };
    let mut buf = vec![0; size];
    let Ok(info) = reader.next_frame(&mut buf) else {
        return 0;
    };
    let step = info.color_type.samples();
    let mut seen = std::collections::HashSet::new();
    for px in buf[..info.buffer_size()].chunks_exact(step) {
        seen.insert(px[..step.min(3)].to_vec());
        if seen.len() >= 1000 {
            break;
        }
    }
    seen.len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64("aGVsbG8="), b"hello");
        assert_eq!(super::base64("aGk"), b"hi");
    }
}
