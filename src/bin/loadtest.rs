//! `loadtest`: drives a running entitlements service with signed Stripe
//! webhooks for many orgs at once, then checks every org's actions and
//! entitlements against a model of what the events mean.
//!
//! `cargo run --release --bin loadtest -- --help`

#[path = "loadtest/script.rs"]
mod script;
#[path = "loadtest/stream.rs"]
mod stream;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::{oneshot, watch, Semaphore};

use script::{Chain, Event, OrgModel, Product, Rng, Shape};
use stream::{SendTimes, StreamConfig, Subscriber};

/// Load-tests a running entitlements service: N orgs × M payments of signed
/// Stripe webhooks (failed attempts, successes, refunds; some delivered
/// twice or out of order) with concurrency C, optional stream subscribers,
/// then checks every org against a model of what the events mean.
///
/// Prints a summary table and, last, one JSON line. Exit status: 0 when
/// every check passed, 1 on any violation, 2 when the run could not start.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// Where the service listens.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    base_url: String,
    /// Number of orgs (N).
    #[arg(long, default_value_t = 50)]
    orgs: usize,
    /// Payments per org (M, at most 125 so that every org's actions fit one
    /// `GET /v1/actions?limit=500`).
    #[arg(long, default_value_t = 3)]
    payments: usize,
    /// Requests in flight at once (C).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Stream subscribers per org (S), connected before the load; each must
    /// see every change.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Share of events delivered twice (at once, later, or for a success
    /// also as a second event about the same PaymentIntent).
    #[arg(long, default_value_t = 0.1)]
    duplicate_share: f64,
    /// Share of payments whose events arrive out of order (refund before
    /// success, failed attempts after it).
    #[arg(long, default_value_t = 0.1)]
    out_of_order_share: f64,
    /// Share of successful payments that are then fully refunded.
    #[arg(long, default_value_t = 0.2)]
    refund_share: f64,
    /// Share of payments with one or two failed attempts first (a quarter
    /// of them never succeed).
    #[arg(long, default_value_t = 0.2)]
    fail_share: f64,
    /// Share of refunds whose charge carries no metadata (the service finds
    /// the org through the PaymentIntent); sent after the success.
    #[arg(long, default_value_t = 0.5)]
    no_metadata_share: f64,
    /// Also send metadata-less refunds before their success (out of order).
    #[arg(long)]
    bare_early_refunds: bool,
    /// Webhook signing secret [default: first of
    /// ENTITLEMENTS__STRIPE__WEBHOOK_SECRETS, else config.toml's "whsec_..."].
    #[arg(long)]
    webhook_secret: Option<String>,
    /// HS256 secret for access tokens [default: ENTITLEMENTS__AUTH__JWT_SECRET,
    /// else "dev-only-secret"].
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Org ids are `<prefix>-<n>` [default: a fresh run id, so runs never collide].
    #[arg(long)]
    org_prefix: Option<String>,
    /// Seed of the load's shape [default: random].
    #[arg(long)]
    seed: Option<u64>,
    /// PaymentIntents to open (org×SKU pairs, each asked for twice at once;
    /// both answers must name the same intent). Needs a reachable Stripe or
    /// emulator behind the service.
    #[arg(long, default_value_t = 0)]
    payment_intents: usize,
    /// Pace webhook sends at this many per second in all (0: as fast as the
    /// service answers). For latency at a given load, e.g. half the rate
    /// an unpaced run reached; the summary shows the rate achieved.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Then send as many `GET /healthz` with the same concurrency and client,
    /// and report the throughput ratio service / healthz.
    #[arg(long)]
    baseline: bool,
    /// Instead of `GET /healthz`, the baseline is the same signed webhooks
    /// sent to this URL's `/webhooks/stripe` (the bare handler of
    /// `benches/ingest.sh`: signature check and JSON parse only).
    #[arg(long, requires = "baseline")]
    bare_url: Option<String>,
    /// The service's pid: its CPU time (from /proc) over the load is
    /// reported per acknowledged webhook.
    #[arg(long)]
    service_pid: Option<u32>,
    /// The baseline server's pid, for its CPU per request likewise.
    #[arg(long)]
    baseline_pid: Option<u32>,
    /// Print only the final JSON line on stdout.
    #[arg(long)]
    json_only: bool,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Delivery attempts per webhook on 503 or connection errors (Stripe retries too).
    #[arg(long, default_value_t = 12)]
    max_attempts: u32,
    /// After the load, how long subscribers may take to catch up, seconds.
    #[arg(long, default_value_t = 20)]
    stream_wait_secs: u64,
}

const MAX_PAYMENTS: usize = 125;
const EXAMPLES: usize = 20;
const EXAMPLES_PER_KIND: usize = 3;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Violations by kind, with the first few described.
#[derive(Default)]
struct Violations {
    counts: BTreeMap<&'static str, u64>,
    examples: Vec<String>,
}

impl Violations {
    fn add(&mut self, kind: &'static str, n: u64, example: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        let count = self.counts.entry(kind).or_default();
        let first = *count == 0;
        *count += n;
        // A few examples of each kind, so that one flood hides no other kind.
        let of_kind = self
            .examples
            .iter()
            .filter(|e| e.starts_with(&format!("{kind}: ")))
            .count();
        if first || (of_kind < EXAMPLES_PER_KIND && self.examples.len() < EXAMPLES) {
            self.examples.push(format!("{kind}: {}", example()));
        }
    }

    fn get(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

struct Ctx {
    args: Args,
    base: String,
    client: reqwest::Client,
    webhook_secret: String,
    jwt_secret: String,
    inflight: Semaphore,
    latency: Mutex<Histogram<u64>>,
    violations: Mutex<Violations>,
    send_times: SendTimes,
    track_send_times: bool,
    requests: AtomicU64,
    acknowledged: AtomicU64,
    retries_503: AtomicU64,
    transport_errors: AtomicU64,
    codes_503: Mutex<BTreeMap<String, u64>>,
    progress: ProgressBar,
    /// With `--rate`, from the load's start: send n goes out at
    /// `start + n / rate`.
    pace: OnceLock<Pace>,
}

struct Pace {
    start: tokio::time::Instant,
    interval: Duration,
    sends: AtomicU64,
}

impl Pace {
    async fn next_slot(&self) {
        let n = self.sends.fetch_add(1, Ordering::Relaxed);
        let at = self.start + self.interval.mul_f64(n as f64);
        tokio::time::sleep_until(at).await;
    }
}

impl Ctx {
    fn violation(&self, kind: &'static str, n: u64, example: impl FnOnce() -> String) {
        self.violations.lock().unwrap().add(kind, n, example);
    }

    fn token(&self, org: &str) -> String {
        let claims = json!({ "org": org, "exp": unix_now() + 24 * 3600 });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )
        .expect("HS256 signing cannot fail")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>`.
fn sign(body: &[u8], secret: &str, t: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The first secret of `ENTITLEMENTS__STRIPE__WEBHOOK_SECRETS` (a TOML array
/// or a comma-separated list), as the service reads it.
fn webhook_secret_from_env() -> Option<String> {
    let raw = std::env::var("ENTITLEMENTS__STRIPE__WEBHOOK_SECRETS").ok()?;
    let raw = raw.trim();
    let first = if raw.starts_with('[') {
        serde_json::from_str::<Vec<String>>(raw)
            .ok()?
            .into_iter()
            .next()?
    } else {
        raw.split(',').next()?.trim().to_owned()
    };
    (!first.is_empty()).then_some(first)
}

fn check_share(name: &str, v: f64) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&v) {
        bail!("--{name} must be between 0 and 1");
    }
    Ok(())
}

fn valid_org_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if args.orgs == 0 || args.concurrency == 0 {
        bail!("--orgs and --concurrency must be at least 1");
    }
    if args.payments == 0 || args.payments > MAX_PAYMENTS {
        bail!("--payments must be 1 to {MAX_PAYMENTS} (each org's actions must fit one page of GET /v1/actions?limit=500)");
    }
    for (name, v) in [
        ("duplicate-share", args.duplicate_share),
        ("out-of-order-share", args.out_of_order_share),
        ("refund-share", args.refund_share),
        ("fail-share", args.fail_share),
        ("no-metadata-share", args.no_metadata_share),
    ] {
        check_share(name, v)?;
    }
    let seed = args.seed.unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::new(nanos ^ (u64::from(std::process::id()) << 32)).next_u64()
    });
    let prefix = args
        .org_prefix
        .clone()
        .unwrap_or_else(|| format!("lt{:08x}", seed as u32));
    if prefix.is_empty()
        || !valid_org_chars(&prefix)
        || prefix.len() + 1 + (args.orgs - 1).to_string().len() > 64
    {
        bail!("--org-prefix must be A-Za-z0-9_- and leave org ids `<prefix>-<n>` at most 64 characters");
    }
    let webhook_secret = args
        .webhook_secret
        .clone()
        .or_else(webhook_secret_from_env)
        .unwrap_or_else(|| "whsec_...".to_owned());
    let jwt_secret = args
        .jwt_secret
        .clone()
        .or_else(|| std::env::var("ENTITLEMENTS__AUTH__JWT_SECRET").ok())
        .unwrap_or_else(|| "dev-only-secret".to_owned());
    let base = args.base_url.trim_end_matches('/').to_owned();

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(args.concurrency * 2)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;

    let tty = std::io::stderr().is_terminal();
    let progress = if tty {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let ctx = Arc::new(Ctx {
        base: base.clone(),
        client: client.clone(),
        webhook_secret,
        jwt_secret,
        inflight: Semaphore::new(args.concurrency),
        latency: Mutex::new(new_histogram()),
        violations: Mutex::new(Violations::default()),
        send_times: Arc::new(Mutex::new(HashMap::new())),
        track_send_times: args.subscribers > 0,
        requests: AtomicU64::new(0),
        acknowledged: AtomicU64::new(0),
        retries_503: AtomicU64::new(0),
        transport_errors: AtomicU64::new(0),
        codes_503: Mutex::new(BTreeMap::new()),
        progress,
        pace: OnceLock::new(),
        args: args.clone(),
    });

    // The service answers, and tells us what it sells.
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .with_context(|| format!("the service does not answer at {base}"))?;
    if health.status() != 200 {
        bail!("GET {base}/healthz answered {}", health.status());
    }
    let products = fetch_products(&ctx, &script::org_id(&prefix, 0)).await?;

    let shape = Shape {
        payments: args.payments,
        fail_share: args.fail_share,
        refund_share: args.refund_share,
        no_metadata_share: args.no_metadata_share,
        duplicate_share: args.duplicate_share,
        out_of_order_share: args.out_of_order_share,
        bare_early_refunds: args.bare_early_refunds,
    };
    let (chains, models, stats) =
        script::build(&prefix, args.orgs, &products, &shape, &mut Rng::new(seed));
    let expected_actions: usize = models.iter().map(|m| m.actions.len()).sum();

    // Subscribers first, so that they see every change.
    let (stop_tx, stop_rx) = watch::channel(false);
    let subscribers = start_subscribers(&ctx, &prefix, stop_rx).await?;

    // PaymentIntents (needs Stripe or an emulator behind the service).
    let pi_report = if args.payment_intents > 0 {
        Some(open_payment_intents(&ctx, &prefix, &products).await)
    } else {
        None
    };

    // The load.
    let chains = Arc::new(chains);
    ctx.progress.set_length(stats.deliveries as u64);
    ctx.progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} webhooks  {per_sec}  eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let ticker = (!tty && !args.json_only).then(|| spawn_ticker(ctx.clone()));
    ctx.progress.reset();
    if args.rate > 0.0 {
        let pace = Pace {
            start: tokio::time::Instant::now(),
            interval: Duration::from_secs_f64(1.0 / args.rate),
            sends: AtomicU64::new(0),
        };
        let _ = ctx.pace.set(pace);
    }
    let service_cpu_before = args.service_pid.and_then(process_cpu_secs);
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let ctx = ctx.clone();
            let chains = chains.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(chain) = chains.get(i) else { break };
                    run_chain(&ctx, chain).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.context("a load worker panicked")?;
    }
    let load_secs = started.elapsed().as_secs_f64();
    let service_cpu_secs = service_cpu_before
        .zip(args.service_pid.and_then(process_cpu_secs))
        .map(|(before, after)| after - before);
    if let Some(t) = ticker {
        t.abort();
    }
    ctx.progress.finish_and_clear();

    // Every org against the model.
    let final_seqs = verify(&ctx, &prefix, &products, &models).await;

    // Streams: wait until each subscriber saw its org's last seq.
    // Measured against the seq the service reports, so that an action the
    // service lost counts once (above), not again as a stream loss.
    let stream_targets: Vec<u64> = final_seqs
        .iter()
        .zip(&models)
        .map(|(seq, m)| seq.unwrap_or(m.actions.len() as u64))
        .collect();
    let stream_report = finish_streams(&ctx, subscribers, &stream_targets, stop_tx).await;

    // Baseline: as many requests, same client and concurrency.
    let requests = ctx.requests.load(Ordering::SeqCst);
    let baseline = if args.baseline {
        let target = match &args.bare_url {
            None => BaselineTarget::Healthz {
                url: format!("{}/healthz", ctx.base),
            },
            Some(url) => BaselineTarget::Bare {
                url: format!("{}/webhooks/stripe", url.trim_end_matches('/')),
                bodies: chains
                    .iter()
                    .flat_map(|c| &c.steps)
                    .map(|s| s.event.body.clone())
                    .collect(),
            },
        };
        Some(run_baseline(&ctx, requests as usize, target).await)
    } else {
        None
    };

    let report = Report {
        prefix: &prefix,
        seed,
        args: &args,
        products: &products,
        stats: &stats,
        expected_actions,
        final_seqs,
        load_secs,
        ctx: &ctx,
        pi: pi_report,
        stream: stream_report,
        baseline,
        service_cpu_secs,
    };
    Ok(report.print())
}

async fn fetch_products(ctx: &Ctx, org: &str) -> anyhow::Result<Vec<Product>> {
    let res = ctx
        .client
        .get(format!("{}/v1/billing/products", ctx.base))
        .bearer_auth(ctx.token(org))
        .send()
        .await
        .context("GET /v1/billing/products")?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status != 200 {
        bail!("GET /v1/billing/products answered {status}: {body} (is --jwt-secret the service's auth.jwt_secret?)");
    }
    let products: Vec<Product> = body["products"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some(Product {
                        sku: p["sku"].as_str()?.to_owned(),
                        amount: p["amount"].as_i64()?,
                        currency: p["currency"].as_str()?.to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if products.is_empty() {
        bail!("GET /v1/billing/products listed no products: {body}");
    }
    Ok(products)
}

/// Non-TTY runs: a plain progress line every 10 s.
fn spawn_ticker(ctx: Arc<Ctx>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut every = tokio::time::interval(Duration::from_secs(10));
        every.tick().await;
        loop {
            every.tick().await;
            let done = ctx.progress.position();
            let total = ctx.progress.length().unwrap_or(0);
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "loadtest: {done}/{total} webhooks acknowledged after {secs:.0} s ({:.0}/s)",
                done as f64 / secs
            );
        }
    })
}

/// One payment's events, in order; a doubled step sends both copies at once.
async fn run_chain(ctx: &Ctx, chain: &Chain) {
    for step in &chain.steps {
        if step.copies == 1 {
            deliver(ctx, &step.event).await;
        } else {
            let copies = (0..step.copies).map(|_| deliver(ctx, &step.event));
            futures_util::future::join_all(copies).await;
        }
    }
}

/// Delivers one webhook like Stripe: retried with backoff on 503 (or a
/// failed connection); anything but 200 or 503 is a violation.
async fn deliver(ctx: &Ctx, event: &Event) -> bool {
    if ctx.track_send_times {
        ctx.send_times
            .lock()
            .unwrap()
            .entry(event.action_id.clone())
            .or_insert_with(Instant::now);
    }
    let url = format!("{}/webhooks/stripe", ctx.base);
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=ctx.args.max_attempts {
        if let Some(pace) = ctx.pace.get() {
            pace.next_slot().await;
        }
        let signature = sign(&event.body, &ctx.webhook_secret, unix_now());
        let permit = ctx.inflight.acquire().await.expect("never closed");
        let start = Instant::now();
        let result = async {
            let res = ctx
                .client
                .post(&url)
                .header("Stripe-Signature", signature)
                .header("Content-Type", "application/json")
                .body(event.body.clone())
                .send()
                .await?;
            let status = res.status().as_u16();
            let body = res.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
        .await;
        let elapsed = start.elapsed();
        drop(permit);
        ctx.requests.fetch_add(1, Ordering::SeqCst);
        match result {
            Ok((status, body)) => {
                ctx.latency
                    .lock()
                    .unwrap()
                    .saturating_record(elapsed.as_micros() as u64);
                match status {
                    200 => {
                        ctx.acknowledged.fetch_add(1, Ordering::SeqCst);
                        ctx.progress.inc(1);
                        return true;
                    }
                    503 => {
                        ctx.retries_503.fetch_add(1, Ordering::SeqCst);
                        let code = serde_json::from_slice::<Value>(&body)
                            .ok()
                            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| "unknown".into());
                        *ctx.codes_503.lock().unwrap().entry(code).or_default() += 1;
                    }
                    other => {
                        ctx.violation("unexpected_status", 1, || {
                            format!(
                                "{} ({}) answered {other}: {}",
                                event.id,
                                event.kind,
                                String::from_utf8_lossy(&body[..body.len().min(200)])
                            )
                        });
                        return false;
                    }
                }
            }
            Err(e) => {
                ctx.transport_errors.fetch_add(1, Ordering::SeqCst);
                if attempt == ctx.args.max_attempts {
                    ctx.violation("gave_up", 1, || format!("{}: {e}", event.id));
                    return false;
                }
            }
        }
        if attempt < ctx.args.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
    ctx.violation("gave_up", 1, || {
        format!(
            "{} still answered 503 after {} attempts",
            event.id, ctx.args.max_attempts
        )
    });
    false
}

/// A GET with the org's token, retried on 503; the JSON body.
async fn get_json(ctx: &Ctx, org: &str, path: &str) -> Result<Value, String> {
    let url = format!("{}{path}", ctx.base);
    let token = ctx.token(org);
    let mut backoff = Duration::from_millis(50);
    for _ in 0..ctx.args.max_attempts {
        let res = ctx.client.get(&url).bearer_auth(&token).send().await;
        match res {
            Ok(res) if res.status() == 200 => {
                return res.json().await.map_err(|e| format!("GET {path}: {e}"))
            }
            Ok(res) if res.status() == 503 => {}
            Ok(res) => {
                let status = res.status();
                let text = res.text().await.unwrap_or_default();
                return Err(format!("GET {path} answered {status}: {text}"));
            }
            Err(_) => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Err(format!("GET {path} kept failing"))
}

/// Checks every org's actions and entitlements; returns the seqs read.
async fn verify(
    ctx: &Arc<Ctx>,
    prefix: &str,
    products: &[Product],
    models: &[OrgModel],
) -> Vec<Option<u64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let seqs = Arc::new(Mutex::new(vec![None; models.len()]));
    let models = Arc::new(models.to_vec());
    let skus: Arc<Vec<String>> = Arc::new(products.iter().map(|p| p.sku.clone()).collect());
    let workers: Vec<_> = (0..ctx.args.concurrency.min(models.len()))
        .map(|_| {
            let (ctx, next, seqs, models, skus) = (
                ctx.clone(),
                next.clone(),
                seqs.clone(),
                models.clone(),
                skus.clone(),
            );
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                loop {
                    let o = next.fetch_add(1, Ordering::SeqCst);
                    let Some(model) = models.get(o) else { break };
                    let org = script::org_id(&prefix, o);
                    let seq = verify_org(&ctx, &org, model, &skus).await;
                    seqs.lock().unwrap()[o] = seq;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let seqs = seqs.lock().unwrap().clone();
    seqs
}

async fn verify_org(ctx: &Ctx, org: &str, model: &OrgModel, skus: &[String]) -> Option<u64> {
    let expected = model.actions.len() as u64;
    let ent = match get_json(ctx, org, "/v1/entitlements").await {
        Ok(v) => v,
        Err(e) => {
            ctx.violation("unexpected_status", 1, || format!("{org}: {e}"));
            return None;
        }
    };
    let actions = match get_json(ctx, org, "/v1/actions?limit=500").await {
        Ok(v) => v["actions"].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            ctx.violation("unexpected_status", 1, || format!("{org}: {e}"));
            return None;
        }
    };

    // seq = number of actions.
    let seq = ent["seq"].as_u64();
    if seq != Some(expected) {
        ctx.violation("seq_mismatch", 1, || {
            format!("{org}: seq {}, expected {expected}", ent["seq"])
        });
    }
    // Entitlements equal the model, listing every SKU.
    let got: BTreeMap<String, bool> = ent["entitlements"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_bool().unwrap_or(false)))
                .collect()
        })
        .unwrap_or_default();
    let listed: HashSet<&String> = got.keys().collect();
    if got != model.entitlements || skus.iter().any(|s| !listed.contains(s)) {
        ctx.violation("wrong_entitlements", 1, || {
            format!("{org}: {:?}, expected {:?}", got, model.entitlements)
        });
    }

    // Actions: none lost, none doubled, none unexpected, fields right.
    let mut by_id: HashMap<&str, u32> = HashMap::new();
    let mut by_event: HashMap<&str, u32> = HashMap::new();
    let mut delivered_by_pi: HashMap<&str, u32> = HashMap::new();
    let mut seqs: Vec<u64> = Vec::new();
    for a in &actions {
        let id = a["id"].as_str().unwrap_or("");
        *by_id.entry(id).or_default() += 1;
        if let Some(e) = a["eventId"].as_str() {
            *by_event.entry(e).or_default() += 1;
        }
        if a["kind"] == "payment" && a["status"] == "delivered" {
            *delivered_by_pi
                .entry(a["externalId"].as_str().unwrap_or(""))
                .or_default() += 1;
        }
        seqs.push(a["seq"].as_u64().unwrap_or(0));
        match model.actions.get(id) {
            None => ctx.violation("unexpected_action", 1, || format!("{org}: {a}")),
            Some(x) => {
                let event_ok = a["eventId"]
                    .as_str()
                    .is_some_and(|e| x.event_ids.contains(e));
                if a["kind"] != x.kind
                    || a["status"] != x.status
                    || a["sku"] != x.sku.as_str()
                    || a["externalId"] != x.external_id.as_str()
                    || !event_ok
                {
                    ctx.violation("wrong_action", 1, || format!("{org}: {a}, expected {x:?}"));
                }
            }
        }
    }
    let doubled = by_id.values().filter(|&&n| n > 1).count()
        + by_event.values().filter(|&&n| n > 1).count()
        + delivered_by_pi.values().filter(|&&n| n > 1).count();
    ctx.violation("doubled", doubled as u64, || {
        format!("{org}: an action, event or PaymentIntent recorded twice: {actions:?}")
    });
    let lost: Vec<&String> = model
        .actions
        .keys()
        .filter(|id| !by_id.contains_key(id.as_str()))
        .collect();
    ctx.violation("lost", lost.len() as u64, || {
        format!("{org}: missing {lost:?}")
    });
    seqs.sort_unstable();
    if doubled == 0 && seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
        ctx.violation("seq_mismatch", 1, || {
            format!("{org}: action seqs are not 1..={}: {seqs:?}", seqs.len())
        });
    }
    seq
}

async fn start_subscribers(
    ctx: &Arc<Ctx>,
    prefix: &str,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Subscriber>> {
    let s = ctx.args.subscribers;
    if s == 0 {
        return Ok(Vec::new());
    }
    // Streams hold their connection; no overall timeout.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .build()
        .context("building the stream client")?;
    let mut subscribers = Vec::new();
    let mut readies = Vec::new();
    for o in 0..ctx.args.orgs {
        let org = script::org_id(prefix, o);
        let config = Arc::new(StreamConfig {
            client: client.clone(),
            url: format!("{}/v1/stream?access_token={}", ctx.base, ctx.token(&org)),
            send_times: ctx.send_times.clone(),
            stop: stop.clone(),
        });
        for _ in 0..s {
            readies.push((o, org.clone(), config.clone()));
        }
    }
    // Connect C at a time, each waiting for its first snapshot.
    let deadline = Instant::now() + Duration::from_secs(120);
    for wave in readies.chunks(ctx.args.concurrency) {
        let mut waiting = Vec::new();
        for (o, org, config) in wave {
            let (tx, rx) = oneshot::channel();
            subscribers.push(stream::spawn(*o, config.clone(), tx));
            waiting.push((org, rx));
        }
        for (org, rx) in waiting {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx).await {
                Ok(Ok(Ok(0))) => {}
                Ok(Ok(Ok(seq))) => bail!(
                    "{org} already has actions (snapshot seq {seq}): use a fresh --org-prefix"
                ),
                Ok(Ok(Err(e))) => bail!("subscriber for {org}: {e}"),
                Ok(Err(_)) => bail!("subscriber for {org} ended before its snapshot"),
                Err(_) => bail!("stream subscribers did not all get their snapshot within 120 s"),
            }
        }
    }
    Ok(subscribers)
}

struct StreamReport {
    connections: usize,
    changes: u64,
    lost: u64,
    doubled: u64,
    reconnects: u64,
    retried_503: u64,
    latency: Histogram<u64>,
}

async fn finish_streams(
    ctx: &Ctx,
    subscribers: Vec<Subscriber>,
    targets: &[u64],
    stop: watch::Sender<bool>,
) -> Option<StreamReport> {
    if subscribers.is_empty() {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(ctx.args.stream_wait_secs);
    loop {
        let behind = subscribers
            .iter()
            .filter(|s| s.state.last.load(Ordering::SeqCst) < targets[s.org])
            .count();
        if behind == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let mut report = StreamReport {
        connections: subscribers.len(),
        changes: 0,
        lost: 0,
        doubled: 0,
        reconnects: 0,
        retried_503: 0,
        latency: new_histogram(),
    };
    for s in subscribers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.task).await;
        let st = &s.state;
        let expected = targets[s.org];
        let last = st.last.load(Ordering::SeqCst);
        let lost = st.missing.load(Ordering::SeqCst) + expected.saturating_sub(last);
        let doubled = st.doubled.load(Ordering::SeqCst);
        report.changes += st.changes.load(Ordering::SeqCst);
        report.lost += lost;
        report.doubled += doubled;
        report.reconnects += st.reconnects.load(Ordering::SeqCst);
        report.retried_503 += st.retried_503.load(Ordering::SeqCst);
        let errors = st.errors.lock().unwrap().clone();
        ctx.violation("stream_lost", lost, || {
            format!(
                "org #{}: subscriber missed {lost} of {expected} events (last seq {last}); {errors:?}",
                s.org
            )
        });
        ctx.violation("stream_doubled", doubled, || {
            format!("org #{}: subscriber got {doubled} events twice", s.org)
        });
        if let Some(h) = st.latency.lock().unwrap().take() {
            let _ = report.latency.add(&h);
        }
    }
    Some(report)
}

struct PiReport {
    pairs: usize,
    requests: u64,
    secs: f64,
    latency: Histogram<u64>,
}

/// Opens PaymentIntents: each org×SKU pair asked for twice at once; both
/// answers must be 200 and name the same intent.
async fn open_payment_intents(ctx: &Arc<Ctx>, prefix: &str, products: &[Product]) -> PiReport {
    let pairs = ctx.args.payment_intents.min(ctx.args.orgs * products.len());
    let latency = Arc::new(Mutex::new(new_histogram()));
    let requests = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let products = Arc::new(products.to_vec());
    let workers: Vec<_> = (0..ctx.args.concurrency.div_ceil(2).max(1))
        .map(|_| {
            let (ctx, latency, requests, next, products) = (
                ctx.clone(),
                latency.clone(),
                requests.clone(),
                next.clone(),
                products.clone(),
            );
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= pairs {
                        break;
                    }
                    let org = script::org_id(&prefix, i % ctx.args.orgs);
                    let product = &products[(i / ctx.args.orgs) % products.len()];
                    let one = || open_one(&ctx, &org, product, &latency, &requests);
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
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let latency = latency.lock().unwrap().clone();
    PiReport {
        pairs,
        requests: requests.load(Ordering::SeqCst),
        secs: started.elapsed().as_secs_f64(),
        latency,
    }
}

async fn open_one(
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

struct BaselineReport {
    name: &'static str,
    requests: u64,
    secs: f64,
    latency: Histogram<u64>,
    /// The baseline server's CPU time over its run (`--baseline-pid`).
    cpu_secs: Option<f64>,
}

enum BaselineTarget {
    Healthz {
        url: String,
    },
    /// The load's own signed webhooks, to a bare handler.
    Bare {
        url: String,
        bodies: Vec<Bytes>,
    },
}

/// User plus system CPU seconds of a process so far, from /proc/PID/stat
/// (in USER_HZ ticks, 100 a second on Linux).
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of stat(5); 0 here is field 3.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// `total` requests to the baseline with the load's client and concurrency.
async fn run_baseline(ctx: &Arc<Ctx>, total: usize, target: BaselineTarget) -> BaselineReport {
    let latency = Arc::new(Mutex::new(new_histogram()));
    let next = Arc::new(AtomicUsize::new(0));
    let name = match target {
        BaselineTarget::Healthz { .. } => "GET /healthz (baseline)",
        BaselineTarget::Bare { .. } => "bare handler (baseline)",
    };
    let target = Arc::new(target);
    let cpu_before = ctx.args.baseline_pid.and_then(process_cpu_secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..ctx.args.concurrency)
        .map(|_| {
            let (ctx, latency, next, target) =
                (ctx.clone(), latency.clone(), next.clone(), target.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    let request = match &*target {
                        BaselineTarget::Healthz { url } => ctx.client.get(url.as_str()),
                        BaselineTarget::Bare { url, bodies } => {
                            let body = bodies[i % bodies.len()].clone();
                            ctx.client
                                .post(url.as_str())
                                .header(
                                    "Stripe-Signature",
                                    sign(&body, &ctx.webhook_secret, unix_now()),
                                )
                                .header("Content-Type", "application/json")
                                .body(body)
                        }
                    };
                    let permit = ctx.inflight.acquire().await.expect("never closed");
                    let start = Instant::now();
                    let res = async {
                        let r = request.send().await?;
                        let status = r.status().as_u16();
                        r.bytes().await.map(|_| status)
                    }
                    .await;
                    let elapsed = start.elapsed();
                    drop(permit);
                    latency
                        .lock()
                        .unwrap()
                        .saturating_record(elapsed.as_micros() as u64);
                    match res {
                        Ok(200) => {}
                        Ok(s) => ctx.violation("baseline", 1, || format!("{name} answered {s}")),
                        Err(e) => ctx.violation("baseline", 1, || format!("{name}: {e}")),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = cpu_before
        .zip(ctx.args.baseline_pid.and_then(process_cpu_secs))
        .map(|(before, after)| after - before);
    let latency = latency.lock().unwrap().clone();
    BaselineReport {
        name,
        requests: latency.len(),
        secs,
        latency,
        cpu_secs,
    }
}

struct Report<'a> {
    prefix: &'a str,
    seed: u64,
    args: &'a Args,
    products: &'a [Product],
    stats: &'a script::ScriptStats,
    expected_actions: usize,
    final_seqs: Vec<Option<u64>>,
    load_secs: f64,
    ctx: &'a Ctx,
    pi: Option<PiReport>,
    stream: Option<StreamReport>,
    baseline: Option<BaselineReport>,
    /// The service's CPU time over the load phase (`--service-pid`).
    service_cpu_secs: Option<f64>,
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 100.0).round() / 100.0
}

fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}

fn row(name: &str, count: u64, rate: Option<f64>, h: &Histogram<u64>) -> String {
    let rate = rate.map_or("-".to_owned(), |r| format!("{r:.0}"));
    if h.is_empty() {
        return format!(
            "{name:<26} {count:>9} {rate:>9} {:>9} {:>9} {:>9} {:>9}",
            "-", "-", "-", "-"
        );
    }
    format!(
        "{name:<26} {count:>9} {rate:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    )
}

impl Report<'_> {
    /// Prints the table (unless --json-only) and the JSON line; true = pass.
    fn print(self) -> bool {
        let ctx = self.ctx;
        let v = ctx.violations.lock().unwrap();
        let latency = ctx.latency.lock().unwrap().clone();
        let requests = ctx.requests.load(Ordering::SeqCst);
        let acked = ctx.acknowledged.load(Ordering::SeqCst);
        let throughput = acked as f64 / self.load_secs;
        let request_rate = requests as f64 / self.load_secs;
        let baseline_rate = self.baseline.as_ref().map(|b| b.requests as f64 / b.secs);
        let ratio = baseline_rate.map(|b| request_rate / b);
        let recorded: u64 = self.final_seqs.iter().flatten().sum();
        let ok = v.total() == 0;

        if !self.args.json_only {
            let a = self.args;
            println!(
                "loadtest run {} (seed {}) against {}",
                self.prefix, self.seed, a.base_url
            );
            let paced = if a.rate > 0.0 {
                format!(", paced at {} webhooks/s", a.rate)
            } else {
                String::new()
            };
            println!(
                "{} orgs × {} payments, concurrency {}{paced}, {} subscriber(s)/org, SKUs: {}",
                a.orgs,
                a.payments,
                a.concurrency,
                a.subscribers,
                self.products
                    .iter()
                    .map(|p| p.sku.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let s = self.stats;
            println!(
                "events {} (failed attempts {}, refunds {} of which {} without metadata), deliveries {} (duplicates {}), out-of-order payments {}",
                s.events, s.failed_attempts, s.refunds, s.bare_refunds, s.deliveries, s.duplicates, s.out_of_order
            );
            println!();
            println!(
                "{:<26} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "", "requests", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms"
            );
            println!(
                "{}",
                row("webhooks", requests, Some(request_rate), &latency)
            );
            if let Some(b) = &self.baseline {
                println!(
                    "{}",
                    row(
                        b.name,
                        b.requests,
                        Some(b.requests as f64 / b.secs),
                        &b.latency
                    )
                );
            }
            if let Some(p) = &self.pi {
                println!(
                    "{}",
                    row(
                        "payment intents",
                        p.requests,
                        Some(p.requests as f64 / p.secs),
                        &p.latency
                    )
                );
            }
            if let Some(st) = &self.stream {
                println!("{}", row("stream delivery", st.changes, None, &st.latency));
            }
            println!();
            println!(
                "throughput: {throughput:.0} acknowledged webhooks/s over {:.2} s ({acked} acknowledged, {} answered 503 and retried, {} connection errors)",
                self.load_secs,
                ctx.retries_503.load(Ordering::SeqCst),
                ctx.transport_errors.load(Ordering::SeqCst),
            );
            let codes = ctx.codes_503.lock().unwrap();
            if !codes.is_empty() {
                println!("503 answers by code: {codes:?}");
            }
            if let Some(r) = ratio {
                println!(
                    "ratio: webhooks {request_rate:.0} req/s / {} {:.0} req/s = {r:.3}",
                    self.baseline.as_ref().map_or("", |b| b.name),
                    baseline_rate.unwrap_or(0.0)
                );
            }
            println!(
                "actions: {recorded} recorded, {} expected; lost {}, doubled {}, unexpected {}, wrong fields {}, seq mismatches {}, wrong entitlements {}",
                self.expected_actions,
                v.get("lost"),
                v.get("doubled"),
                v.get("unexpected_action"),
                v.get("wrong_action"),
                v.get("seq_mismatch"),
                v.get("wrong_entitlements"),
            );
            if let Some(st) = &self.stream {
                println!(
                    "streams: {} connections, {} changes received; lost {}, doubled {}, reconnects {}, connects retried after 503: {}",
                    st.connections, st.changes, st.lost, st.doubled, st.reconnects, st.retried_503
                );
            }
            println!(
                "unexpected statuses {}, gave up {}",
                v.get("unexpected_status"),
                v.get("gave_up")
            );
            if ok {
                println!("RESULT: PASS");
            } else {
                println!("RESULT: FAIL ({} violations: {:?})", v.total(), v.counts);
            }
        }
        for e in &v.examples {
            eprintln!("violation: {e}");
        }

        let mut out = json!({
            "run": self.prefix,
            "seed": self.seed,
            "baseUrl": self.args.base_url,
            "orgs": self.args.orgs,
            "payments": self.args.payments,
            "concurrency": self.args.concurrency,
            "pacedRate": self.args.rate,
            "subscribersPerOrg": self.args.subscribers,
            "events": self.stats.events,
            "deliveries": self.stats.deliveries,
            "requests": requests,
            "acknowledged": acked,
            "retried503": ctx.retries_503.load(Ordering::SeqCst),
            "connectionErrors": ctx.transport_errors.load(Ordering::SeqCst),
            "durationSecs": (self.load_secs * 1000.0).round() / 1000.0,
            "throughput": throughput.round(),
            "requestRate": request_rate.round(),
            "latencyMs": latency_json(&latency),
            "expectedActions": self.expected_actions,
            "recordedActions": recorded,
            "lost": v.get("lost"),
            "doubled": v.get("doubled"),
            "unexpectedActions": v.get("unexpected_action"),
            "wrongActions": v.get("wrong_action"),
            "seqMismatches": v.get("seq_mismatch"),
            "wrongEntitlements": v.get("wrong_entitlements"),
            "unexpectedStatuses": v.get("unexpected_status"),
            "gaveUp": v.get("gave_up"),
            "violations": v.total(),
            "ok": ok,
        });
        if let Some(cpu) = self.service_cpu_secs {
            out["serviceCpuUsPerWebhook"] = json!((cpu * 1e6 / acked.max(1) as f64).round());
        }
        if let Some(b) = &self.baseline {
            out["baseline"] = json!({
                "name": b.name,
                "requests": b.requests,
                "rate": (b.requests as f64 / b.secs).round(),
                "latencyMs": latency_json(&b.latency),
                "cpuUsPerRequest": b.cpu_secs.map(|c| (c * 1e6 / b.requests.max(1) as f64).round()),
            });
            out["ratio"] = json!(ratio.map(|r| (r * 1000.0).round() / 1000.0));
        }
        if let Some(p) = &self.pi {
            out["paymentIntents"] = json!({
                "pairs": p.pairs,
                "requests": p.requests,
                "latencyMs": latency_json(&p.latency),
                "violations": v.get("payment_intent"),
            });
        }
        if let Some(st) = &self.stream {
            out["stream"] = json!({
                "connections": st.connections,
                "changes": st.changes,
                "lost": st.lost,
                "doubled": st.doubled,
                "reconnects": st.reconnects,
                "retried503": st.retried_503,
                "deliveryMs": latency_json(&st.latency),
            });
        }
        println!("{out}");
        ok
    }
}
