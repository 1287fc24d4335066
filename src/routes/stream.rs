use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest};
use actix_web_lab::sse;
use actors::model::unix_now;
use actors::org::{GetSnapshot, Replay, ReplaySince};
use actors::org_event::OrgEvent;
use actors::sse_hub::{SseHub, Subscribe, Unsubscribe};
use futures_util::{stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::StreamCaller;
use crate::error::ApiError;
use crate::startup::AppState;

/// The org's live stream: a snapshot (or the missed events after
/// `Last-Event-ID`), then every change, until the token expires.
///
/// Server-sent events, each with `id: <seq>`:
/// - `org.entitlements.snapshot`, data `Snapshot`: first on every
///   connection, except that a reconnect with `Last-Event-ID` whose missed
///   events are still known gets those events, in order, instead;
/// - `org.entitlements.changed`, data `EntitlementsChanged`;
/// - `org.payment.failed`, data `PaymentFailed`.
///
/// A comment line comes at least every `sse.keep_alive_secs`. The connection
/// ends when the token expires; a client that cannot keep up is disconnected
/// and reconnects with `Last-Event-ID`, losing nothing. The token may be given
/// as `?access_token=` since EventSource cannot set headers.
#[utoipa::path(
    get,
    path = "/v1/stream",
    tag = "entitlements",
    security(("bearerAuth" = []), ("accessToken" = [])),
    params(crate::openapi::LastEventId),
    responses(
        (status = 200, description = "A `text/event-stream` of the org's events.",
            body = crate::openapi::StreamEvent, content_type = "text/event-stream"),
        (status = 401, description = "`unauthorized`: the access token (header or `access_token`) is missing, malformed, badly signed or expired.",
            body = crate::openapi::ErrorBody),
        (status = 503, description = "`overloaded` (the org's mailbox is full) or `persistence_unavailable` (the org could not be loaded).",
            body = crate::openapi::ErrorBody),
    ),
)]
pub async fn stream(
    req: HttpRequest,
    StreamCaller(caller): StreamCaller,
    state: web::Data<AppState>,
) -> Result<
    sse::Sse<impl futures_util::Stream<Item = Result<sse::Event, std::convert::Infallible>>>,
    ApiError,
> {
    let org_id = caller.org_id;
    // Subscribe before asking for the snapshot or replay: every event after
    // it reaches the queue, and the ones before it are in the answer.
    let subscription = state
        .hub
        .send(Subscribe {
            org_id: org_id.to_string(),
        })
        .await
        .map_err(|_| ApiError::Overloaded)?;
    let guard = Unsubscribed {
        hub: state.hub.clone(),
        org_id: org_id.to_string(),
        id: subscription.id,
    };

    let last_event_id = req
        .headers()
        .get("Last-Event-ID")
        .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()));
    let (first, last_sent): (Vec<Arc<OrgEvent>>, u64) = match last_event_id {
        Some(Some(after)) => match state
            .directory
            .ask(
                &org_id,
                ReplaySince {
                    last_event_id: after,
                },
            )
            .await?
        {
            Replay::Events(events) => {
                let last = events.last().map_or(after, |e| e.seq);
                (events, last)
            }
            Replay::Snapshot(snapshot) => {
                (vec![Arc::new(OrgEvent::snapshot(&snapshot))], snapshot.seq)
            }
        },
        // No id, or one we never issued: start from a snapshot.
        _ => {
            let snapshot = state.directory.ask(&org_id, GetSnapshot).await?;
            (vec![Arc::new(OrgEvent::snapshot(&snapshot))], snapshot.seq)
        }
    };

    // Only ever forward: an org actor that restarts offers its recent
    // events again (another node may have written them meanwhile), and the
    // ones this browser already has are dropped by seq.
    let mut last_sent = last_sent;
    let live = ReceiverStream::new(subscription.events).filter(move |e| {
        let fresh = e.seq > last_sent;
        if fresh {
            last_sent = e.seq;
        }
        std::future::ready(fresh)
    });
    let until_expiry = Duration::from_secs(caller.expires_at.saturating_sub(unix_now()));
    let mut closing = state.closing.clone();
    let end = async move {
        tokio::select! {
            _ = tokio::time::sleep(until_expiry) => {}
            _ = closing.wait_for(|closing| *closing) => {}
        }
    };
    let events = stream::iter(first)
        .chain(live)
        .take_until(Box::pin(end))
        .map(move |event| {
            let _keep_subscribed = &guard;
            Ok(sse::Event::Data(
                sse::Data::new(event.data.clone())
                    .event(event.kind.name())
                    .id(event.seq.to_string()),
            ))
        });
    Ok(sse::Sse::from_stream(events)
        .with_keep_alive(Duration::from_secs(state.settings.sse.keep_alive_secs)))
}

/// Leaves the hub when the connection's stream is dropped.
struct Unsubscribed {
    hub: Addr<SseHub>,
    org_id: String,
    id: u64,
}

impl Drop for Unsubscribed {
    fn drop(&mut self) {
        self.hub.do_send(Unsubscribe {
            org_id: std::mem::take(&mut self.org_id),
            id: self.id,
        });
    }
}
