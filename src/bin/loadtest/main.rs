//! `loadtest`: drives a running entitlements service with signed Stripe
//! webhooks for many orgs at once, then checks every org's actions and
//! entitlements against a model of what the events mean.
//!
//! `cargo run --release --bin loadtest -- --help`

mod baseline;
mod deliver;
mod http;
mod payment_intents;
mod report;
mod script;
mod stream;
mod subscribers;
mod verify;
mod violations;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use testkit::procfs::CpuSample;
use testkit::token::token;
use testkit::unix_now;
use tokio::sync::{watch, Semaphore};

use baseline::run_baseline;
use deliver::{run_chain, Pace};
use http::RawClient;
use payment_intents::open_payment_intents;
use report::Report;
use script::{Product, Rng, Shape};
use stream::SendTimes;
use subscribers::{finish_streams, start_subscribers};
use verify::verify;
use violations::Violations;
use workers::run_jobs;

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
    /// Then send the same signed webhooks, as many requests, same client and
    /// concurrency, to this URL's `/webhooks/stripe` (the bare handler of
    /// `benches/ingest.sh`: signature check and JSON parse only), and report
    /// the throughput ratio service / bare handler.
    #[arg(long)]
    bare_url: Option<String>,
    /// The service's pid: its CPU time (from /proc) over the load is
    /// reported per acknowledged webhook.
    #[arg(long)]
    service_pid: Option<u32>,
    /// The baseline server's pid, for its CPU per request likewise.
    #[arg(long, requires = "bare_url")]
    baseline_pid: Option<u32>,
    /// After the bare handler, the same webhooks to this URL: the bare
    /// handler as the durable floor (`bare_webhook --durable-store`), which
    /// also records a row per event durably before its 200.
    #[arg(long, requires = "bare_url")]
    floor_url: Option<String>,
    /// The durable floor's pid, for its CPU per request.
    #[arg(long, requires = "floor_url")]
    floor_pid: Option<u32>,
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
const WEBHOOK_PATH: &str = "/webhooks/stripe";

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

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

struct Ctx {
    args: Args,
    base: String,
    client: reqwest::Client,
    /// The webhooks' own client (see `http`).
    webhooks: RawClient,
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

impl Ctx {
    fn violation(&self, kind: &'static str, n: u64, example: impl FnOnce() -> String) {
        self.violations.lock().unwrap().add(kind, n, example);
    }

    fn token(&self, org: &str) -> String {
        token(&self.jwt_secret, org, unix_now() + 24 * 3600)
    }
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
    let timeout = Duration::from_secs(args.timeout_secs);
    let ctx = Arc::new(Ctx {
        base: base.clone(),
        client: client.clone(),
        webhooks: RawClient::new(&base, timeout).await?,
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
        let _ = ctx.pace.set(Pace::new(args.rate));
    }
    let service_cpu_before = args.service_pid.and_then(CpuSample::take);
    let started = Instant::now();
    let load = {
        let (ctx, chains) = (ctx.clone(), chains.clone());
        move |i: usize| {
            let (ctx, chains) = (ctx.clone(), chains.clone());
            async move { run_chain(&ctx, &chains[i]).await }
        }
    };
    run_jobs(args.concurrency, chains.len(), load)
        .await
        .context("a load worker panicked")?;
    let load_secs = started.elapsed().as_secs_f64();
    let service_cpu = service_cpu_before
        .zip(args.service_pid.and_then(CpuSample::take))
        .map(|(before, after)| after.since(&before));
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

    // Baselines: as many requests, same client and concurrency.
    let requests = ctx.requests.load(Ordering::SeqCst) as usize;
    let bodies: Arc<[Bytes]> = chains
        .iter()
        .flat_map(|c| &c.steps)
        .map(|s| s.event.body.clone())
        .collect();
    let baseline = run_baseline(
        &ctx,
        "bare handler (baseline)",
        args.bare_url.as_deref(),
        args.baseline_pid,
        requests,
        bodies.clone(),
    )
    .await?;
    let floor = run_baseline(
        &ctx,
        "durable floor",
        args.floor_url.as_deref(),
        args.floor_pid,
        requests,
        bodies,
    )
    .await?;

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
        floor,
        service_cpu,
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
