//! What verifying and parsing one webhook costs, against the floor: one raw
//! HMAC-SHA256 over the same signed payload. Criterion prints each time; the
//! last lines print the ratios to the floor, measured in this same run.

use std::time::{Duration, Instant};

use actors::{signature, stripe_event};
use criterion::{black_box, criterion_group, Criterion};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const SECRET: &str = "whsec_bench_secret";

/// A `payment_intent.succeeded` shaped like Stripe's (861 bytes).
fn event_body() -> Vec<u8> {
    serde_json::json!({
        "id": "evt_3PqXyZ2eZvKYlo2C1abcdEFG",
        "object": "event",
        "api_version": "2017-08-15",
        "created": 1_795_724_616,
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": "req_earPesfPOOzvP6", "idempotency_key": "confirm-1" },
        "type": "payment_intent.succeeded",
        "data": { "object": {
            "id": "pi_3PqXyZ2eZvKYlo2C1xyzAB12", "object": "payment_intent",
            "amount": 99900, "amount_capturable": 0, "amount_received": 99900,
            "capture_method": "automatic", "client_secret": "pi_3PqXyZ2eZvKYlo2C1xyzAB12_secret_abcdefghijklmnop",
            "confirmation_method": "automatic", "created": 1_795_724_615, "currency": "usd",
            "customer": null, "description": null, "latest_charge": "ch_3PqXyZ2eZvKYlo2C1ch12345",
            "livemode": false, "metadata": { "org_id": "acme-corp", "sku": "compliance-pack" },
            "payment_method": "pm_1PqXyZ2eZvKYlo2CabcdEFGH", "payment_method_types": ["card"],
            "status": "succeeded", "statement_descriptor": null, "transfer_group": null
        }}
    })
    .to_string()
    .into_bytes()
}

/// One signed event and the service's view of the secrets.
struct Fixture {
    body: Vec<u8>,
    now: i64,
    header: String,
    secrets: Vec<actors::secret::Secret>,
}

impl Fixture {
    fn new() -> Self {
        let body = event_body();
        let now = 1_795_724_616;
        let header = signature::sign(&body, SECRET, now);
        // The matching secret second, as while a secret is rotated.
        let secrets = vec![
            actors::secret::Secret::new("whsec_rotated_out"),
            actors::secret::Secret::new(SECRET),
        ];
        Self {
            body,
            now,
            header,
            secrets,
        }
    }

    fn verify(&self) {
        signature::verify(
            Some(black_box(&self.header)),
            black_box(&self.body),
            &self.secrets,
            300,
            self.now,
        )
        .unwrap()
    }

    fn parse(&self) -> stripe_event::StripeEvent {
        stripe_event::parse(black_box(&self.body)).unwrap()
    }
}

fn raw_hmac(t: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn benches(c: &mut Criterion) {
    let f = Fixture::new();

    c.bench_function("raw HMAC-SHA256 of the signed payload", |b| {
        b.iter(|| raw_hmac(black_box(f.now), black_box(&f.body)))
    });
    c.bench_function("verify Stripe-Signature (2 secrets)", |b| {
        b.iter(|| f.verify())
    });
    c.bench_function("parse event", |b| b.iter(|| f.parse()));
    c.bench_function("verify + parse", |b| {
        b.iter(|| {
            f.verify();
            f.parse()
        })
    });
}

/// Mean time of `f` over a fixed budget, for the ratio lines.
fn mean(mut f: impl FnMut()) -> Duration {
    let budget = Duration::from_millis(500);
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < budget {
        for _ in 0..1000 {
            f();
        }
        n += 1000;
    }
    start.elapsed() / n
}

fn ratios() {
    let f = Fixture::new();
    let floor = mean(|| {
        black_box(raw_hmac(black_box(f.now), black_box(&f.body)));
    });
    let verify = mean(|| {
        f.verify();
    });
    let parse = mean(|| {
        black_box(f.parse());
    });
    println!(
        "\nratios to one raw HMAC-SHA256 of the same {} bytes ({floor:?}):",
        f.body.len()
    );
    println!(
        "  verify (the matching secret second): {:.2}x",
        verify.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  parse:                               {:.2}x",
        parse.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  verify + parse:                      {:.2}x",
        (verify + parse).as_secs_f64() / floor.as_secs_f64()
    );
}

criterion_group!(group, benches);

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
    ratios();
}
