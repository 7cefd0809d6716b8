//! The ingest stream's gRPC messages, read from the HTTP/2 request body by
//! the collector itself rather than by tonic's `Streaming`.
//!
//! Why: `Streaming` keeps one buffer per stream, as large as the largest
//! message it has read plus an HTTP/2 frame, for the life of the stream.
//! An agent sends one batch per poll, so between polls (nearly all of the
//! time) that buffer holds nothing, yet at 1,000 agents it was the largest
//! single item on the collector's heap: about 69 KB per stream, 350 B per
//! tracked connection (BENCHMARKS.md). [`MessageReader`] holds only what
//! has arrived and not yet been read: a message that fits in the frame it
//! came in is a slice of that frame, one spread over frames is gathered
//! into a buffer of its own size, and both are gone once decoded.
//!
//! [`TakeBody`] wraps the generated ingest server: it moves each request's
//! body into the request's extensions, where the handler takes it
//! ([`IngestBody::take`]), and hands tonic an empty one. Responses are
//! still tonic's.
//!
//! The wire format is gRPC's: a flag byte (0: not compressed), a
//! big-endian u32 length, the message. Refusals use tonic's status codes
//! for the same faults, so agents and tests see what they saw before.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tonic::body::Body;
use tonic::codegen::{http, Body as HttpBody, Service};
use tonic::server::NamedService;
use tonic::{Code, Status};

/// gRPC's message prefix: the compression flag and the length.
const HEADER: usize = 5;

/// A remainder at most this long, left after a message, is copied out of
/// the frame it came in so that the frame's memory can go.
const TAIL_COPY: usize = 4096;

/// Reads length-prefixed gRPC messages from a request body.
#[derive(Debug)]
pub struct MessageReader<B> {
    body: B,
    /// What has arrived and not been read, in order.
    chunks: VecDeque<Bytes>,
    buffered: usize,
    /// Messages longer than this are refused.
    max: usize,
    ended: bool,
}

impl<B> MessageReader<B>
where
    B: HttpBody<Data = Bytes, Error = Status> + Unpin,
{
    pub fn new(body: B, max: usize) -> MessageReader<B> {
        MessageReader {
            body,
            chunks: VecDeque::new(),
            buffered: 0,
            max,
            ended: false,
        }
    }

    /// The next message, `None` at the end of the stream. An error is
    /// the status the stream should end with.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        if !self.fill(HEADER).await? {
            return if self.buffered == 0 {
                Ok(None)
            } else {
                Err(Status::internal("unexpected EOF inside a message header"))
            };
        }
        let mut header = [0u8; HEADER];
        self.copy_out(&mut header);
        match header[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "compressed message, but this stream was opened without a grpc-encoding",
                ))
            }
            flag => {
                return Err(Status::internal(format!(
                    "invalid compression flag {flag} (valid flags are 0 and 1)"
                )))
            }
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > self.max {
            return Err(Status::out_of_range(format!(
                "message too large: {len} bytes, the limit is {} bytes",
                self.max
            )));
        }
        if !self.fill(len).await? {
            return Err(Status::internal("unexpected EOF inside a message"));
        }
        let message = self.take(len);
        self.release_tail();
        Ok(Some(message))
    }

    /// Reads frames until `n` bytes are buffered; false if the stream ended
    /// first.
    async fn fill(&mut self, n: usize) -> Result<bool, Status> {
        while self.buffered < n {
            if self.ended {
                return Ok(false);
            }
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                None => self.ended = true,
                // A cancelled request is the client going away: the end.
                Some(Err(status)) if status.code() == Code::Cancelled => self.ended = true,
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    // Trailers on a request carry nothing we read.
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            self.buffered += data.len();
                            self.chunks.push_back(data);
                        }
                    }
                }
            }
        }
        Ok(true)
    }

    /// Copies the next `out.len()` buffered bytes into `out`.
    fn copy_out(&mut self, out: &mut [u8]) {
        let mut at = 0;
        while at < out.len() {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let n = front.len().min(out.len() - at);
            out[at..at + n].copy_from_slice(&front[..n]);
            front.advance(n);
            at += n;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.buffered -= at;
    }

    /// The next `len` buffered bytes: a slice of one frame when they lie in
    /// one, else gathered into a buffer of exactly `len`.
    fn take(&mut self, len: usize) -> Bytes {
        if let Some(front) = self.chunks.front_mut() {
            if front.len() >= len {
                let message = front.split_to(len);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                self.buffered -= len;
                return message;
            }
        }
        let mut out = BytesMut::zeroed(len);
        self.copy_out(&mut out);
        out.freeze()
    }

    /// Copies a short remainder out of the frame that holds it, so that
    /// nothing keeps a whole frame alive until the next poll.
    fn release_tail(&mut self) {
        if self.buffered == 0 || self.buffered > TAIL_COPY {
            return;
        }
        let mut tail = BytesMut::zeroed(self.buffered);
        let n = self.buffered;
        self.copy_out(&mut tail);
        self.buffered = n;
        self.chunks.push_back(tail.freeze());
    }

    #[cfg(test)]
    /// Bytes held between messages, for tests.
    pub fn buffered(&self) -> usize {
        self.buffered
    }
}

/// A request body moved aside for the ingest handler. Taken once.
#[derive(Debug, Clone)]
pub struct IngestBody(Arc<Mutex<Option<Body>>>);

impl IngestBody {
    /// The body, if this is the first to ask.
    pub fn take(&self) -> Option<Body> {
        match self.0.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

/// Wraps a gRPC service so that its handler reads the request body itself
/// (see the module's documentation).
#[derive(Debug, Clone)]
pub struct TakeBody<S> {
    inner: S,
}

impl<S> TakeBody<S> {
    pub fn new(inner: S) -> TakeBody<S> {
        TakeBody { inner }
    }
}

impl<S: NamedService> NamedService for TakeBody<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for TakeBody<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        parts
            .extensions
            .insert(IngestBody(Arc::new(Mutex::new(Some(body)))));
        self.inner
            .call(http::Request::from_parts(parts, Body::empty()))
    }
}

/// A request body of the given chunks, ending with `end` (none: cleanly).
#[cfg(test)]
pub(crate) struct Chunks {
    pub chunks: VecDeque<Bytes>,
    pub end: Option<Status>,
}

#[cfg(test)]
impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Poll::Ready(match self.chunks.pop_front() {
            Some(c) => Some(Ok(http_body::Frame::data(c))),
            None => self.end.take().map(Err),
        })
    }
}

#[cfg(test)]
pub(crate) fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire bytes cut into chunks of the given sizes (the last takes the rest).
    fn reader(wire: &[u8], cuts: &[usize], max: usize) -> MessageReader<Chunks> {
        let mut chunks = VecDeque::new();
        let mut at = 0;
        for &c in cuts {
            let end = (at + c).min(wire.len());
            chunks.push_back(Bytes::copy_from_slice(&wire[at..end]));
            at = end;
        }
        if at < wire.len() {
            chunks.push_back(Bytes::copy_from_slice(&wire[at..]));
        }
        MessageReader::new(Chunks { chunks, end: None }, max)
    }

    async fn read_all(r: &mut MessageReader<Chunks>) -> Result<Vec<Vec<u8>>, Status> {
        let mut out = Vec::new();
        while let Some(m) = r.message().await? {
            out.push(m.to_vec());
        }
        Ok(out)
    }

    fn messages() -> Vec<Vec<u8>> {
        vec![
            b"first".to_vec(),
            Vec::new(),
            (0..=255u8).cycle().take(10_000).collect(),
            b"last".to_vec(),
        ]
    }

    #[tokio::test]
    async fn messages_read_whole_however_the_frames_cut_them() {
        let wire: Vec<u8> = messages().iter().flat_map(|m| framed(m)).collect();
        // One chunk; byte by byte; cuts inside headers and inside bodies.
        for cuts in [
            vec![],
            vec![1; wire.len()],
            vec![3, 7, 5000, 2, 9000],
            vec![12, 10_005],
        ] {
            let mut r = reader(&wire, &cuts, 1 << 20);
            assert_eq!(
                read_all(&mut r).await.expect("reads"),
                messages(),
                "cuts {cuts:?}"
            );
        }
    }

    #[tokio::test]
    async fn nothing_is_held_between_messages_that_end_with_their_frames() {
        let ms = messages();
        let mut chunks = VecDeque::new();
        // The large message in three frames, each other one in its own.
        for m in &ms {
            let w = framed(m);
            if w.len() > 8000 {
                for part in w.chunks(4000) {
                    chunks.push_back(Bytes::copy_from_slice(part));
                }
            } else {
                chunks.push_back(Bytes::from(w));
            }
        }
        let mut r = MessageReader::new(Chunks { chunks, end: None }, 1 << 20);
        for m in &ms {
            assert_eq!(r.message().await.expect("reads").as_deref(), Some(&m[..]));
            assert_eq!(r.buffered(), 0, "held after a message of {} bytes", m.len());
            assert!(r.chunks.is_empty());
        }
        assert!(r.message().await.expect("the end").is_none());
    }

    #[tokio::test]
    async fn a_short_remainder_is_copied_out_of_its_frame() {
        // Two messages in one frame: after the first, the second's bytes
        // must not keep the frame's allocation alive.
        let mut wire = framed(&[7u8; 3000]);
        wire.extend(framed(b"xy"));
        let frame = Bytes::from(wire);
        let mut r = MessageReader::new(
            Chunks {
                chunks: VecDeque::from([frame.clone()]),
                end: None,
            },
            1 << 20,
        );
        let first = r.message().await.expect("reads").expect("a message");
        drop(first);
        assert_eq!(r.buffered(), HEADER + 2);
        // The frame is now held only here: the reader let go of it.
        assert!(frame.is_unique(), "the reader still holds the frame");
        assert_eq!(
            r.message().await.expect("reads").as_deref(),
            Some(&b"xy"[..])
        );
    }

    #[tokio::test]
    async fn oversized_compressed_and_cut_messages_are_refused() {
        let big = framed(&[0u8; 2000]);
        let err = read_all(&mut reader(&big, &[], 1999))
            .await
            .expect_err("too large");
        assert_eq!(err.code(), Code::OutOfRange, "{err}");
        assert!(err.message().contains("too large"), "{err}");
        // A message at the limit is fine.
        assert_eq!(
            read_all(&mut reader(&big, &[], 2000))
                .await
                .expect("at the limit")
                .len(),
            1
        );

        let mut compressed = framed(b"zz");
        compressed[0] = 1;
        let err = read_all(&mut reader(&compressed, &[], 100))
            .await
            .expect_err("compressed");
        assert_eq!(err.code(), Code::Internal, "{err}");
        let mut flagged = framed(b"zz");
        flagged[0] = 9;
        let err = read_all(&mut reader(&flagged, &[], 100))
            .await
            .expect_err("bad flag");
        assert_eq!(err.code(), Code::Internal, "{err}");

        let whole = framed(b"hello");
        for cut in [3, whole.len() - 1] {
            let err = read_all(&mut reader(&whole[..cut], &[], 100))
                .await
                .expect_err("cut");
            assert_eq!(err.code(), Code::Internal, "cut at {cut}: {err}");
            assert!(err.message().contains("EOF"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_cancelled_body_ends_the_stream_and_others_errors_pass_through() {
        let wire = framed(b"one");
        let body = |end| Chunks {
            chunks: VecDeque::from([Bytes::from(wire.clone())]),
            end: Some(end),
        };
        let mut r = MessageReader::new(body(Status::cancelled("gone")), 100);
        assert_eq!(
            r.message().await.expect("reads").as_deref(),
            Some(&b"one"[..])
        );
        assert!(r.message().await.expect("cancel is the end").is_none());
        let mut r = MessageReader::new(body(Status::unavailable("reset")), 100);
        r.message().await.expect("reads");
        let err = r.message().await.expect_err("the body's error");
        assert_eq!(err.code(), Code::Unavailable);
    }
}
