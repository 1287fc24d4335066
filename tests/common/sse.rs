//! The stream request of the tests' app, with a token or `Last-Event-ID`;
//! frames and reads are testkit's.

pub use testkit::sse::*;
pub use testkit::sse_client::*;

use super::TestApp;

/// Sends the stream request; the response is not yet checked.
pub async fn request_stream(
    app: &TestApp,
    bearer: Option<&str>,
    query_token: Option<&str>,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut url = app.url("/v1/stream");
    if let Some(t) = query_token {
        url = format!("{url}?access_token={t}");
    }
    let mut req = stream_client()
        .get(url)
        .header("Accept", "text/event-stream");
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    tokio::time::timeout(MUST_ARRIVE, req.send())
        .await
        .expect("stream headers within 10s")
        .expect("stream request")
}

/// A stream for `org` with the Authorization header.
pub async fn open(app: &TestApp, org: &str) -> SseClient {
    SseClient::from_response(request_stream(app, Some(&app.token(org)), None, None).await)
}

/// A stream for `org` resuming after `last_event_id`.
pub async fn resume(app: &TestApp, org: &str, last_event_id: &str) -> SseClient {
    SseClient::from_response(
        request_stream(app, Some(&app.token(org)), None, Some(last_event_id)).await,
    )
}
