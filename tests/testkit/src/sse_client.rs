//! An SSE client for the tests over a reqwest response: frames, reads
//! bounded in time, and assertions on what the stream sends.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::sse::{Frame, Parser};

pub type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// What a read of the stream gave.
#[derive(Debug)]
pub enum Read {
    Frame(Frame),
    /// The server closed the body.
    End,
    /// Nothing within the time asked for.
    Timeout,
}

/// How long a read waits for something that must come.
pub const MUST_ARRIVE: Duration = Duration::from_secs(10);

pub struct SseClient {
    body: Body,
    parser: Parser,
    frames: VecDeque<Frame>,
    ended: bool,
}

impl SseClient {
    /// Asserts that `res` is a 200 event stream, and reads its body.
    pub fn from_response(res: reqwest::Response) -> Self {
        assert_eq!(res.status(), 200, "stream answered {}", res.status());
        let content_type = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content-type is {content_type:?}"
        );
        SseClient {
            body: Box::pin(res.bytes_stream()),
            parser: Parser::default(),
            frames: VecDeque::new(),
            ended: false,
        }
    }

    /// The next frame, the end of the body, or a timeout.
    pub async fn read(&mut self, within: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Read::Frame(frame);
            }
            if self.ended {
                assert!(
                    self.parser.between_frames(),
                    "body ended inside a frame: {:?}",
                    self.parser
                );
                return Read::End;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Read::Timeout,
                Ok(Some(Ok(chunk))) => {
                    let frames = self.parser.push(&chunk).expect("stream is UTF-8");
                    self.frames.extend(frames);
                }
                // A reset connection counts as the end of the body.
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
            }
        }
    }

    /// The next event (comments skipped); panics on end or timeout.
    pub async fn next_event(&mut self) -> Frame {
        self.next_event_within(MUST_ARRIVE).await
    }

    pub async fn next_event_within(&mut self, within: Duration) -> Frame {
        match self.try_next_event(within).await {
            Read::Frame(f) => f,
            other => panic!("expected an event within {within:?}, got {other:?}"),
        }
    }

    /// The next event (comments skipped), the end, or a timeout.
    pub async fn try_next_event(&mut self, within: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Read::Frame(f) if f.is_comment() => continue,
                other => return other,
            }
        }
    }

    /// Asserts that no event arrives for `quiet` (comments are fine).
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        match self.try_next_event(quiet).await {
            Read::Timeout => {}
            other => panic!("expected no event for {quiet:?}, got {other:?}"),
        }
    }

    /// Events until the body ends; panics if it does not end within `within`.
    pub async fn events_until_end(&mut self, within: Duration) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next_event(left).await {
                Read::Frame(f) => events.push(f),
                Read::End => return events,
                Read::Timeout => panic!(
                    "the stream did not end within {within:?} (got {} events)",
                    events.len()
                ),
            }
        }
    }
}

/// A client for streams: no overall timeout, since a stream outlives any
/// one request's budget (each read is bounded instead).
pub fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}
