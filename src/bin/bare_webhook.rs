//! `bare_webhook`: the ceiling that `benches/ingest.sh` measures the service
//! against. An actix-web handler for `POST /webhooks/stripe` that does only
//! what every webhook must cost: read the body, check `Stripe-Signature`
//! (the service's own verifier) and parse the event (the service's own
//! parser), then answer 200. No actors, no storage, nothing durable.
//!
//! `bare_webhook --bind 127.0.0.1:8799 --webhook-secret whsec_...`
//!
//! With `--durable-store PATH` it is the durable floor instead: each event
//! that names an org also becomes one action row, answered only once the
//! service's own PersistenceActor has it fsynced in the embedded store
//! (SQLite), with no org actor, ledger or deduplication in between. What
//! separates the service from this is its org logic and actors, not the
//! durable write every webhook needs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::{Actor, Recipient};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actors::metrics::Metrics;
use actors::model::{now_ms, unix_now, Action, ActionKind, ActionStatus, OrgActorId};
use actors::persistence::{persist, Persist, PersistenceActor, PersistenceSettings};
use actors::secret::Secret;
use actors::store::{ActionStore, EmbeddedStore};
use actors::stripe_event::{EventEffect, StripeEvent};
use actors::{signature, stripe_event};
use clap::Parser;

// The service's allocator, so that the two differ only in what they do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8799")]
    bind: String,
    #[arg(long)]
    webhook_secret: String,
    /// The service's `stripe.tolerance_secs`.
    #[arg(long, default_value_t = 300)]
    tolerance_secs: u64,
    /// Be the durable floor: record a row per event in this SQLite file.
    #[arg(long)]
    durable_store: Option<PathBuf>,
}

struct Verifier {
    secrets: Vec<Secret>,
    tolerance_secs: u64,
    /// The durable floor's PersistenceActor.
    durable: Option<Recipient<Persist>>,
}

/// The row an event makes in the durable floor: one per delivery, a
/// duplicate's too, with a `seq` unique across the process (the floor keeps
/// no per-org state). An event that names no org, such as a refund without
/// metadata (which the service looks up), is answered with no write. With
/// the loadtest's mix that nets a few percent more rows than the service's.
fn row_of(event: StripeEvent) -> Option<Action> {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let (kind, status, org_id, sku, payment_intent_id, amount, currency) = match event.effect {
        EventEffect::PaymentSucceeded(f) | EventEffect::PaymentFailed(f) => {
            let status = if event.event_type == "payment_intent.succeeded" {
                ActionStatus::Delivered
            } else {
                ActionStatus::Failed
            };
            (
                ActionKind::Payment,
                status,
                f.org_id?,
                f.sku?,
                f.payment_intent_id,
                f.amount,
                f.currency,
            )
        }
        EventEffect::Revoked(f) => (
            ActionKind::Refund,
            ActionStatus::Delivered,
            f.org_id?,
            f.sku.unwrap_or_default(),
            f.payment_intent_id?,
            f.amount,
            f.currency,
        ),
        EventEffect::Unreadable { .. } | EventEffect::Ignored => return None,
    };
    Some(Action {
        id: format!("act_{}", event.id),
        org_id,
        seq: SEQ.fetch_add(1, Ordering::Relaxed),
        kind,
        status,
        sku,
        external_id: payment_intent_id,
        event_id: Some(event.id),
        amount,
        currency,
        created_at_ms: now_ms(),
        simulated: false,
    })
}

async fn webhook(
    req: HttpRequest,
    body: web::Bytes,
    verifier: web::Data<Verifier>,
) -> HttpResponse {
    let header = req
        .headers()
        .get("Stripe-Signature")
        .and_then(|h| h.to_str().ok());
    if signature::verify(
        header,
        &body,
        &verifier.secrets,
        verifier.tolerance_secs,
        unix_now() as i64,
    )
    .is_err()
    {
        return HttpResponse::BadRequest().finish();
    }
    let event = match stripe_event::parse(&body) {
        Ok(event) => event,
        Err(_) => return HttpResponse::BadRequest().finish(),
    };
    // The bare handler proper stops at the parse: nothing of the row is built.
    if let Some(persistence) = &verifier.durable {
        if let Some(row) = row_of(event) {
            if persist(persistence, OrgActorId::next(), row).await.is_err() {
                return HttpResponse::ServiceUnavailable().finish();
            }
        }
    }
    HttpResponse::Ok().json(serde_json::json!({ "received": true }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let durable = match &args.durable_store {
        Some(path) => {
            let store = ActionStore::Embedded(EmbeddedStore::new(path));
            store.migrate().await.map_err(std::io::Error::other)?;
            // As the service's default configuration has it for SQLite:
            // batches of up to 1,000 rows, no spacing between writes. On a
            // thread of its own (the service's shares its first org thread).
            let settings = PersistenceSettings {
                batch_max_rows: 1000,
                min_interval: Duration::ZERO,
                write_timeout: Duration::from_secs(3),
                max_pending: 8000,
            };
            // Handed work as the service's org threads are (`scheduling`).
            let arbiter = actors::scheduling::hand_off_arbiter("persistence".into());
            let actor = PersistenceActor::start_in_arbiter(&arbiter, move |_| {
                PersistenceActor::new(store, settings, Metrics::new())
            });
            Some(actor.recipient())
        }
        None => None,
    };
    let verifier = web::Data::new(Verifier {
        secrets: vec![Secret::new(args.webhook_secret)],
        tolerance_secs: args.tolerance_secs,
        durable,
    });
    HttpServer::new(move || {
        App::new()
            .app_data(verifier.clone())
            .app_data(web::PayloadConfig::new(262_144))
            .route("/webhooks/stripe", web::post().to(webhook))
    })
    .bind(&args.bind)?
    .run()
    .await
}
