//! Opening PaymentIntents through the service, each org×SKU pair twice at
//! once: both answers must name the same intent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::script::{self, Product};
use crate::workers::run_jobs;
use crate::{new_histogram, Ctx};

pub struct PiReport {
    pub pairs: usize,
    pub requests: u64,
    pub secs: f64,
    pub latency: Histogram<u64>,
}

/// Opens PaymentIntents: each org×SKU pair asked for twice at once; both
/// answers must be 200 and name the same intent.
pub async fn open_payment_intents(ctx: &Arc<Ctx>, prefix: &str, products: &[Product]) -> PiReport {
    let pairs = ctx.args.payment_intents.min(ctx.args.orgs * products.len());
    let latency = Arc::new(Mutex::new(new_histogram()));
    let requests = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let open_pair = {
        let (ctx, latency, requests) = (ctx.clone(), latency.clone(), requests.clone());
        let products = Arc::new(products.to_vec());
        let prefix = prefix.to_owned();
        move |i: usize| {
            let (ctx, latency, requests) = (ctx.clone(), latency.clone(), requests.clone());
            let org = script::org_id(&prefix, i % ctx.args.orgs);
            let product = products[(i / ctx.args.orgs) % products.len()].clone();
            async move {
                let one = || open_one(&ctx, &org, &product, &latency, &requests);
                let (a, b) = tokio::join!(one(), one());
                match (a, b) {
                    (Ok(a), Ok(b)) if a == b => {}
                    (Ok(a), Ok(b)) => ctx.violation("payment_intent", 1, || {
                        format!("{org}/{}: two open PaymentIntents {a} and {b}", product.sku)
                    }),
                    (Err(e), _) | (_, Err(e)) => ctx.violation("payment_intent", 1, || {
                        format!("{org}/{}: {e}", product.sku)
                    }),
                }
            }
        }
    };
    let _ = run_jobs(ctx.args.concurrency.div_ceil(2).max(1), pairs, open_pair).await;
    let latency = latency.lock().unwrap().clone();
    PiReport {
        pairs,
        requests: requests.load(Ordering::SeqCst),
        secs: started.elapsed().as_secs_f64(),
        latency,
    }
}

pub async fn open_one(
    ctx: &Ctx,
    org: &str,
    product: &Product,
    latency: &Mutex<Histogram<u64>>,
    requests: &AtomicU64,
) -> Result<String, String> {
    let url = format!("{}/v1/billing/payment-intents", ctx.base);
    let token = ctx.token(org);
    let mut backoff = Duration::from_millis(50);
    for _ in 0..ctx.args.max_attempts {
        let permit = ctx.inflight.acquire().await.expect("never closed");
        let start = Instant::now();
        let res = ctx
            .client
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({ "sku": product.sku }))
            .send()
            .await;
        let res = match res {
            Ok(r) => {
                let status = r.status().as_u16();
                r.bytes().await.map(|b| (status, b))
            }
            Err(e) => Err(e),
        };
        drop(permit);
        requests.fetch_add(1, Ordering::SeqCst);
        latency
            .lock()
            .unwrap()
            .saturating_record(start.elapsed().as_micros() as u64);
        match res {
            Ok((200, body)) => {
                let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let id = v["paymentIntentId"].as_str().unwrap_or("");
                if id.is_empty() || v["clientSecret"].as_str().unwrap_or("").is_empty() {
                    return Err(format!("incomplete answer {v}"));
                }
                if v["amount"] != product.amount {
                    return Err(format!(
                        "amount {} instead of {}",
                        v["amount"], product.amount
                    ));
                }
                return Ok(id.to_owned());
            }
            Ok((503, _)) | Err(_) => {}
            Ok((status, body)) => {
                return Err(format!(
                    "answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ))
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Err("kept answering 503".into())
}
