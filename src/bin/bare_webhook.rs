//! `bare_webhook`: the ceiling that `benches/ingest.sh` measures the service
//! against. An actix-web handler for `POST /webhooks/stripe` that does only
//! what every webhook must cost: read the body, check `Stripe-Signature`
//! (the service's own verifier) and parse the event (the service's own
//! parser), then answer 200. No actors, no storage, nothing durable.
//!
//! `bare_webhook --bind 127.0.0.1:8799 --webhook-secret whsec_...`

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actors::model::unix_now;
use actors::secret::Secret;
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
}

struct Verifier {
    secrets: Vec<Secret>,
    tolerance_secs: u64,
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
    match stripe_event::parse(&body) {
        Ok(_) => HttpResponse::Ok().json(serde_json::json!({ "received": true })),
        Err(_) => HttpResponse::BadRequest().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let verifier = web::Data::new(Verifier {
        secrets: vec![Secret::new(args.webhook_secret)],
        tolerance_secs: args.tolerance_secs,
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
