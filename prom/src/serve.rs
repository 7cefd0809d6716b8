//! `GET /metrics` over HTTP/1.1: one task accepting, one per connection,
//! the text made by the caller's render function on every scrape.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::text::CONTENT_TYPE;

/// Serves `/metrics` on `listener` until `shutdown` completes. `render`
/// makes the text of one scrape, or says why it cannot (answered 503).
pub async fn serve<R, F>(listener: TcpListener, render: R, shutdown: impl Future<Output = ()>)
where
    R: Fn() -> F + Clone + Send + 'static,
    F: Future<Output = Result<String, String>> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(%error, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, render.clone()));
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics: connection ended");
            }
        });
    }
}

async fn answer<R, F>(
    req: Request<Incoming>,
    render: R,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    R: Fn() -> F,
    F: Future<Output = Result<String, String>>,
{
    if req.uri().path() != "/metrics" {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /metrics\n".into(),
        ));
    }
    match render().await {
        Ok(text) => {
            let mut res = Response::new(Full::new(Bytes::from(text)));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            Ok(res)
        }
        Err(why) => Ok(plain(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))),
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(text)));
    *res.status_mut() = status;
    res
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.expect("request");
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.expect("reply");
        reply
    }

    #[tokio::test]
    async fn scrapes_render_each_time_and_failures_are_503() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let scrapes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = scrapes.clone();
        let render = move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                match n {
                    0 => Ok("a 1\n".to_string()),
                    _ => Err("not ready".to_string()),
                }
            }
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, render, async {
            let _ = stopped.await;
        }));
        let ok = get(addr, "/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE), "{ok}");
        assert!(ok.ends_with("\r\n\r\na 1\n"), "{ok}");
        let failed = get(addr, "/metrics").await;
        assert!(failed.starts_with("HTTP/1.1 503"), "{failed}");
        assert!(failed.ends_with("not ready\n"), "{failed}");
        let missing = get(addr, "/").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert_eq!(scrapes.load(std::sync::atomic::Ordering::Relaxed), 2);
        let _ = stop.send(());
        server.await.expect("the server stops on shutdown");
    }
}
