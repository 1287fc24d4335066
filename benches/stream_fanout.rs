//! Stream fan-out benchmark: memory per idle `GET /v1/stream` connection and
//! change-to-browser latency, against the real binary in its own process.
//!
//! ```sh
//! cargo bench --bench stream_fanout -- --connections 8000
//! cargo bench --bench stream_fanout -- --help
//! ```
//!
//! What it does, in order:
//!
//! 1. Raises its own open-files limit to the hard limit (the service, its
//!    child, inherits it), writes a temporary config (embedded store in a
//!    temp dir, a free port, `[sse]` defaults unless overridden, JSON logs at
//!    `info` into a file) and starts the release binary (`cargo bench` builds
//!    `target/release/entitlements` first; `--bin` runs another).
//! 2. Baseline: sequential `GET /healthz` round trips; the service's VmRSS.
//! 3. Opens `--connections` streams, one org each, and waits for every
//!    snapshot; VmRSS again. Bytes per idle connection =
//!    (RSS after - RSS before) / N, which includes each org's actor since
//!    every connection is its own org (`--preload-orgs` splits the two).
//! 4. `--changes` of those orgs change at once, `--rounds` times: one
//!    keep-alive connection per org, first a `GET /healthz` on each, all at
//!    once (the baseline at the same concurrency), then one change on each,
//!    all at once: a signed `payment_intent.succeeded` webhook for a new
//!    PaymentIntent (`--via webhook`, the production path) or
//!    `POST /v1/billing/simulate-success` (`--via simulate`, one round).
//!    Latency per subscriber = event arrival minus the change request's send
//!    ("from send"), and minus the arrival of its 200 ("from 200": the change
//!    is durable by then; the event is published before the 200 is sent, so
//!    this is often negative). Every subscriber of a changed org must see its
//!    change, else it counts as lost; unchanged orgs must see nothing.
//! 5. Multi-tab: `--tab-orgs` more orgs with `--tabs` streams each (on top of
//!    the idle ones, which stay open); memory per extra connection, then the
//!    same bursts; every tab must see its org's change.
//!
//! The client is one tokio runtime with `--client-threads` threads and raw
//! HTTP/1.1 over `TcpStream` (chunked bodies decoded by hand, events read
//! with testkit's SSE parser), so it costs little next to the service. It
//! still shares the machine with the service (and with whatever else runs
//! there): the report gives the CPU seconds of the service, of the client
//! and of every other process during the bursts, and the load average, so
//! that a slow run can be told from a slow service.
//! Prints a table, then one JSON line.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{json, Value};
use testkit::events::{self, Price};
use testkit::process::{free_port, ServiceProcess};
use testkit::procfs::{clock_ticks_per_sec, process_cpu_secs};
use testkit::signing::sign_now;
use testkit::sse;
use testkit::unix_now;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};

const JWT_SECRET: &str = "stream-fanout-bench-secret-9f2c4e7a1b";
const WEBHOOK_SECRET: &str = "whsec_stream_fanout";
const SKU: &str = "compliance-pack";
/// The price of `SKU` in the config the bench writes.
const PRICE: Price = Price {
    sku: SKU,
    amount: 99900,
    currency: "usd",
};

#[derive(Parser, Debug, Clone)]
#[command(about = "Stream fan-out: memory per idle connection and change-to-browser latency")]
struct Args {
    /// Idle stream connections, one org each.
    #[arg(long, default_value_t = 8000)]
    connections: usize,
    /// How many of those orgs change at once.
    #[arg(long, default_value_t = 2000)]
    changes: usize,
    /// Multi-tab run: orgs ...
    #[arg(long, default_value_t = 200)]
    tab_orgs: usize,
    /// ... with this many streams each (0 skips the run).
    #[arg(long, default_value_t = 10)]
    tabs: usize,
    /// Client (load generator) runtime threads.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Connections being opened at once (the listen backlog is finite).
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// The service binary; default: the one cargo built for this bench.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// `[sse] keep_alive_secs`; default: the service's default.
    #[arg(long)]
    keep_alive_secs: Option<u64>,
    /// `[sse] client_queue`; default: the service's default.
    #[arg(long)]
    client_queue: Option<usize>,
    /// RUST_LOG for the service (its log goes to a file in the temp dir).
    #[arg(long, default_value = "info")]
    service_log: String,
    /// Wait this long after the last snapshot before reading VmRSS.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Give up waiting for events after this long.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Load every org's actor (GET /v1/entitlements) before opening the
    /// streams, to split memory into org actors and connections.
    #[arg(long)]
    preload_orgs: bool,
    /// Print the service's /metrics lines matching this (e.g. `flush|batch`) at the end.
    #[arg(long)]
    dump_metrics: Option<String>,
    /// Wait this long (with the streams open) before the change burst, e.g.
    /// to attach a profiler to the printed pid.
    #[arg(long, default_value_t = 0)]
    hold_before_burst_secs: u64,
    /// Keep the service up this long after the main burst (for inspection).
    #[arg(long, default_value_t = 0)]
    hold_after_burst_secs: u64,
    /// Write "org sent_us answered_us arrived_us" (Unix µs) of each run's first
    /// round here (extension `.fanout` / `.tabs`).
    #[arg(long)]
    dump_arrivals: Option<PathBuf>,
    /// Write the service's log here instead of into the temporary directory.
    #[arg(long)]
    service_log_file: Option<PathBuf>,
    /// How orgs change.
    #[arg(long, value_enum, default_value_t = Via::Webhook)]
    via: Via,
    /// Change bursts per run (webhook only): latencies are pooled.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.changes <= args.connections,
        "--changes must be at most --connections"
    );
    let nofile = raise_nofile_limit();
    let needed = args.connections + args.changes + args.tab_orgs * (args.tabs + 1) + 64;
    anyhow::ensure!(
        nofile as usize >= needed,
        "open files limit is {nofile}, this run needs about {needed} (client) and as many in the service"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(run(args, nofile))
}

/// Soft RLIMIT_NOFILE := hard; the service inherits it.
fn raise_nofile_limit() -> u64 {
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

// ---------------------------------------------------------------- time

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let _ = EPOCH_UNIX_US.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64,
        );
        Instant::now()
    })
}

/// Wall-clock microseconds at the epoch, to line figures up with the service's log.
static EPOCH_UNIX_US: OnceLock<u64> = OnceLock::new();

fn unix_us(ns_since_epoch: u64) -> u64 {
    EPOCH_UNIX_US.get().copied().unwrap_or(0) + ns_since_epoch / 1000
}

/// Nanoseconds since the bench's epoch; never 0 (0 means "not yet").
fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64 + 1
}

fn token(org: &str) -> String {
    testkit::token::token(JWT_SECRET, org, unix_now() + 4 * 3600)
}

// ---------------------------------------------------------------- service

struct Service {
    process: ServiceProcess,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Service {
    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn status_kib(&self, key: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn rss_bytes(&self) -> u64 {
        self.status_kib("VmRSS") * 1024
    }

    /// CPU seconds (user + system) the service has used so far.
    fn cpu_secs(&self) -> f64 {
        process_cpu_secs(self.pid()).unwrap_or(0.0)
    }

    fn nofile_limit(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/limits", self.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_owned())
            .unwrap_or_else(|| "?".into())
    }

    /// SIGTERM, 20 s to drain, then killed; the temporary directory goes
    /// with it.
    fn stop(self) {
        self.process.stop(Duration::from_secs(20));
    }
}

/// CPU seconds the whole machine has been busy (all but idle and iowait).
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / clock_ticks_per_sec()
}

/// CPU seconds (user + system) this bench has used so far.
fn own_cpu_secs() -> f64 {
    process_cpu_secs(std::process::id()).unwrap_or(0.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn service_binary(args: &Args) -> PathBuf {
    if let Some(bin) = &args.bin {
        return bin.clone();
    }
    // Cargo builds the package's binaries (release profile) for benches.
    PathBuf::from(env!("CARGO_BIN_EXE_entitlements"))
}

fn write_config(dir: &Path, port: u16, args: &Args) -> std::io::Result<PathBuf> {
    let mut sse = String::new();
    if let Some(k) = args.keep_alive_secs {
        sse.push_str(&format!("keep_alive_secs = {k}\n"));
    }
    if let Some(q) = args.client_queue {
        sse.push_str(&format!("client_queue = {q}\n"));
    }
    let text = format!(
        r#"
[server]
bind = "127.0.0.1:{port}"
environment = "development"
[auth]
jwt_secret = "{JWT_SECRET}"
[stripe]
secret_key = "sk_test_stream_fanout"
publishable_key = "pk_test_stream_fanout"
webhook_secrets = ["{WEBHOOK_SECRET}"]
api_base = "http://127.0.0.1:9"
reconcile_interval_secs = 0
[store]
backend = "embedded"
path = "{store}"
[sse]
{sse}
[logging]
format = "json"
[[products]]
sku = "{SKU}"
name = "Compliance Pack"
amount = 99900
currency = "usd"
"#,
        store = dir.join("actions.db").display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn start_service(args: &Args) -> anyhow::Result<Service> {
    let bin = service_binary(args);
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run `cargo build --release --bin entitlements`",
        bin.display()
    );
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let config = write_config(dir.path(), port, args)?;
    let log_path = args
        .service_log_file
        .clone()
        .unwrap_or_else(|| dir.path().join("service.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut command = Command::new(&bin);
    command
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", &args.service_log)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let process = ServiceProcess::start(command, port, "/healthz", Duration::from_secs(30))
        .await
        .map_err(|e| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            anyhow::anyhow!("{e}:\n{log}")
        })?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    Ok(Service { process, addr, dir })
}

// ---------------------------------------------------------------- plain HTTP/1.1

/// One keep-alive HTTP/1.1 connection for small request/response pairs.
struct Http {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(1024),
        })
    }

    fn request(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(t) = token {
            r.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if method == "POST" {
            r.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        r.push_str("\r\n");
        r.push_str(body);
        r.into_bytes()
    }

    async fn send(&mut self, request: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(request).await
    }

    /// Reads one response with a Content-Length body: (status, body).
    async fn response(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])
                    .unwrap_or("")
                    .to_owned();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let len = header(&head, "content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        return Err(eof());
                    }
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Ok((status, body));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(eof());
            }
        }
    }

    async fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let req = self.request("GET", path, None, "");
        self.send(&req).await?;
        self.response().await
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

// ---------------------------------------------------------------- SSE subscribers

/// What one subscriber saw; written by its task, read by the driver.
#[derive(Default)]
struct Seen {
    /// Arrival of the snapshot (ns since epoch), 0 = not yet.
    snapshot_at: AtomicU64,
    /// Arrival of the first `org.entitlements.changed`, 0 = not yet.
    changed_at: AtomicU64,
    /// Events after the snapshot (changes and failures).
    events: AtomicU64,
    /// The stream ended or failed.
    ended: AtomicBool,
}

struct Subscriber {
    org: usize,
    seen: Arc<Seen>,
}

/// Counters shared by all subscriber tasks.
#[derive(Default)]
struct Totals {
    connected: AtomicUsize,
    failed: AtomicUsize,
}

/// Opens a stream for `org_name` and follows it until the connection ends.
async fn subscribe(
    addr: SocketAddr,
    org_name: String,
    seen: Arc<Seen>,
    totals: Arc<Totals>,
    connecting: Arc<Semaphore>,
) {
    let permit = connecting.acquire_owned().await.expect("semaphore open");
    let result = follow(addr, &org_name, &seen, &totals, Some(permit)).await;
    if let Err(e) = result {
        if seen.snapshot_at.load(Ordering::Relaxed) == 0 {
            totals.failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("stream for {org_name} failed before its snapshot: {e}");
        }
    }
    seen.ended.store(true, Ordering::Relaxed);
}

async fn follow(
    addr: SocketAddr,
    org: &str,
    seen: &Seen,
    totals: &Totals,
    mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let req = format!(
        "GET /v1/stream?access_token={} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        token(org)
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw: Vec<u8> = Vec::with_capacity(1024);
    // Response head.
    let (chunked, body_start) = loop {
        if stream.read_buf(&mut raw).await? == 0 {
            return Err(std::io::Error::other("closed before the response head"));
        }
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 200") {
                return Err(std::io::Error::other(format!(
                    "stream answered {}",
                    head.lines().next().unwrap_or("")
                )));
            }
            let chunked = header(&head, "transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            break (chunked, end + 4);
        }
    };
    raw.drain(..body_start);
    let mut decoder = Body::new(chunked);
    let mut parser = sse::Parser::default();
    loop {
        let at = now_ns();
        let mut body = Vec::new();
        let done = decoder.decode(&mut raw, &mut body)?;
        let frames = parser.push(&body).map_err(std::io::Error::other)?;
        for frame in frames.iter().filter(|f| !f.is_comment()) {
            match frame.event() {
                "org.entitlements.snapshot" => {
                    if seen.snapshot_at.load(Ordering::Relaxed) == 0 {
                        seen.snapshot_at.store(at, Ordering::Relaxed);
                        totals.connected.fetch_add(1, Ordering::Relaxed);
                        permit.take();
                    }
                }
                "org.entitlements.changed" => {
                    let _ = seen.changed_at.compare_exchange(
                        0,
                        at,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    seen.events.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    seen.events.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if done {
            return Ok(());
        }
        if stream.read_buf(&mut raw).await? == 0 {
            return Ok(());
        }
    }
}

/// Undoes chunked transfer coding (or passes the body through).
struct Body {
    chunked: bool,
    /// Data bytes left in the current chunk.
    left: usize,
    /// The CRLF after a chunk's data is still due.
    crlf_due: bool,
}

impl Body {
    fn new(chunked: bool) -> Self {
        Self {
            chunked,
            left: 0,
            crlf_due: false,
        }
    }

    /// Moves decoded bytes from `raw` to `out`; true at the last chunk.
    fn decode(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> std::io::Result<bool> {
        if !self.chunked {
            out.append(raw);
            return Ok(false);
        }
        let mut pos = 0;
        loop {
            if self.left > 0 {
                let n = self.left.min(raw.len() - pos);
                out.extend_from_slice(&raw[pos..pos + n]);
                pos += n;
                self.left -= n;
                if self.left > 0 {
                    break;
                }
                self.crlf_due = true;
            }
            if self.crlf_due {
                if raw.len() - pos < 2 {
                    break;
                }
                pos += 2;
                self.crlf_due = false;
            }
            let Some(eol) = find(&raw[pos..], b"\r\n") else {
                break;
            };
            let line = std::str::from_utf8(&raw[pos..pos + eol]).unwrap_or("");
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
            pos += eol + 2;
            if size == 0 {
                raw.drain(..pos);
                return Ok(true);
            }
            self.left = size;
        }
        raw.drain(..pos);
        Ok(false)
    }
}

/// Opens one stream per (org, tab) and waits for every snapshot.
async fn open_streams(
    addr: SocketAddr,
    orgs: &[String],
    tabs: usize,
    args: &Args,
) -> anyhow::Result<(Vec<Subscriber>, Duration)> {
    let totals = Arc::new(Totals::default());
    let connecting = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut subs = Vec::with_capacity(orgs.len() * tabs);
    let started = Instant::now();
    for tab in 0..tabs {
        for (i, org) in orgs.iter().enumerate() {
            let _ = tab;
            let seen = Arc::new(Seen::default());
            subs.push(Subscriber {
                org: i,
                seen: seen.clone(),
            });
            tokio::spawn(subscribe(
                addr,
                org.clone(),
                seen,
                totals.clone(),
                connecting.clone(),
            ));
        }
    }
    let want = subs.len();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs.max(60));
    loop {
        let connected = totals.connected.load(Ordering::Relaxed);
        let failed = totals.failed.load(Ordering::Relaxed);
        if connected == want {
            return Ok((subs, started.elapsed()));
        }
        anyhow::ensure!(failed == 0, "{failed} of {want} streams failed to open");
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {connected} of {want} streams got their snapshot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- bursts

/// How a change is made.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// A signed `payment_intent.succeeded` webhook with a new PaymentIntent
    /// (the production path; every round is a new change).
    Webhook,
    /// `POST /v1/billing/simulate-success` with the org's token (a second
    /// one is a no-op, so one round only).
    Simulate,
}

struct Burst {
    /// Per org: (sent, answered) in ns since epoch; answered 0 = failed.
    times: Vec<(u64, u64)>,
    statuses: HashMap<u16, usize>,
    /// Why requests failed (I/O errors), and how often.
    errors: HashMap<String, usize>,
}

fn change_request(conn: &Http, via: Via, org: &str, tag: &str) -> Vec<u8> {
    match via {
        Via::Simulate => conn.request(
            "POST",
            "/v1/billing/simulate-success",
            Some(&token(org)),
            &json!({ "sku": SKU }).to_string(),
        ),
        Via::Webhook => {
            let event_id = format!("evt_{tag}_{org}");
            let pi = format!("pi_{tag}_{org}");
            let body =
                events::payment_intent(&event_id, events::SUCCEEDED, &pi, org, &PRICE).to_string();
            let signature = sign_now(body.as_bytes(), WEBHOOK_SECRET);
            let mut r = format!(
                "POST /webhooks/stripe HTTP/1.1\r\nHost: {}\r\nStripe-Signature: {signature}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                conn.host,
                body.len()
            );
            r.push_str(&body);
            r.into_bytes()
        }
    }
}

/// One keep-alive connection per org; first a `GET /healthz` on each, all
/// at once, then (after a pause) one change on each, all at once.
async fn bursts(
    addr: SocketAddr,
    orgs: &[String],
    args: &Args,
    tag: &str,
) -> anyhow::Result<(Burst, Burst)> {
    let n = orgs.len();
    let mut conns = Vec::with_capacity(n);
    {
        let connecting = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
        let mut opening = Vec::with_capacity(n);
        for _ in 0..n {
            let connecting = connecting.clone();
            opening.push(tokio::spawn(async move {
                let _permit = connecting.acquire().await;
                Http::connect(addr).await
            }));
        }
        for o in opening {
            conns.push(o.await??);
        }
    }
    let start_health = Arc::new(Barrier::new(n + 1));
    let health_done = Arc::new(Barrier::new(n + 1));
    let start_change = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for (mut conn, org) in conns.into_iter().zip(orgs) {
        let (start_health, health_done, start_change) = (
            start_health.clone(),
            health_done.clone(),
            start_change.clone(),
        );
        let health = conn.request("GET", "/healthz", None, "");
        let change = change_request(&conn, args.via, org, tag);
        tasks.push(tokio::spawn(async move {
            start_health.wait().await;
            let h = round_trip(&mut conn, &health).await;
            health_done.wait().await;
            start_change.wait().await;
            let c = round_trip(&mut conn, &change).await;
            (h, c)
        }));
    }
    start_health.wait().await;
    health_done.wait().await;
    // Let the healthz burst's tail drain before the changes go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    start_change.wait().await;
    let mut health = Burst {
        times: Vec::with_capacity(n),
        statuses: HashMap::new(),
        errors: HashMap::new(),
    };
    let mut change = Burst {
        times: Vec::with_capacity(n),
        statuses: HashMap::new(),
        errors: HashMap::new(),
    };
    for t in tasks {
        let (h, c) = t.await?;
        for (burst, (sent, answered, status, error)) in [(&mut health, h), (&mut change, c)] {
            burst.times.push((sent, answered));
            *burst.statuses.entry(status).or_default() += 1;
            if let Some(e) = error {
                *burst.errors.entry(e).or_default() += 1;
            }
        }
    }
    Ok((health, change))
}

/// (sent, answered, status); answered 0 and status 0 when it failed, and
/// then why.
async fn round_trip(conn: &mut Http, request: &[u8]) -> (u64, u64, u16, Option<String>) {
    let sent = now_ns();
    if let Err(e) = conn.send(request).await {
        return (sent, 0, 0, Some(format!("send: {e}")));
    }
    match conn.response().await {
        Ok((status, _)) => (sent, now_ns(), status, None),
        Err(e) => (sent, 0, 0, Some(format!("response: {e}"))),
    }
}

// ---------------------------------------------------------------- statistics

#[derive(Clone, Copy, Default)]
struct Stats {
    count: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    min: f64,
}

/// Nearest-rank percentiles of values in ms.
fn stats(values: &[f64]) -> Stats {
    if values.is_empty() {
        return Stats::default();
    }
    let mut values = values.to_vec();
    values.sort_by(|a, b| a.total_cmp(b));
    let at =
        |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    Stats {
        count: values.len(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: *values.last().unwrap(),
        min: values[0],
    }
}

impl Stats {
    fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": round3(self.p50),
            "p90_ms": round3(self.p90),
            "p99_ms": round3(self.p99),
            "max_ms": round3(self.max),
            "min_ms": round3(self.min),
        })
    }

    fn row(&self, name: &str) -> String {
        format!(
            "  {name:<40} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            self.count, self.p50, self.p90, self.p99, self.max
        )
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

/// Everything measured over one or more rounds of bursts (samples in ms).
#[derive(Default)]
struct Delivery {
    health: Vec<f64>,
    change_rtt: Vec<f64>,
    from_send: Vec<f64>,
    from_200: Vec<f64>,
    /// Per round: p99 of delivery from send.
    round_p99: Vec<f64>,
    round_health_p99: Vec<f64>,
    expected: usize,
    lost: usize,
    before_200: usize,
    change_failures: usize,
    unexpected: u64,
    statuses: HashMap<u16, usize>,
    /// Per round: first change sent to last event delivered.
    wall_ms: Vec<f64>,
    /// CPU seconds of the service and of this client, and the wall seconds,
    /// from connecting each round's connections to its last delivery.
    cpu: (f64, f64, f64),
    /// CPU seconds of everything else on the machine meanwhile.
    cpu_others: f64,
    health_failures: usize,
    /// I/O errors of healthz and change requests, by kind.
    errors: HashMap<String, usize>,
}

impl Delivery {
    fn json(&self) -> Value {
        let (h, s) = (stats(&self.health), stats(&self.from_send));
        json!({
            "rounds": self.round_p99.len(),
            "healthz_same_concurrency": h.json(),
            "change_request_round_trip": stats(&self.change_rtt).json(),
            "delivery_from_send": s.json(),
            "delivery_from_200": stats(&self.from_200).json(),
            "p99_ratio_to_healthz_p99": round3(s.p99 / h.p99.max(1e-9)),
            "round_delivery_p99_ms": self.round_p99.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            "round_healthz_p99_ms": self.round_health_p99.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            "expected_deliveries": self.expected,
            "lost": self.lost,
            "events_before_their_200": self.before_200,
            "change_requests_failed": self.change_failures,
            "unexpected_events_on_unchanged_orgs": self.unexpected,
            "change_statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<HashMap<_, _>>(),
            "round_all_delivered_within_ms": self.wall_ms.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            "cpu_seconds_service": round3(self.cpu.0),
            "cpu_seconds_client": round3(self.cpu.1),
            "cpu_window_seconds": round3(self.cpu.2),
            "cpu_seconds_other_processes": round3(self.cpu_others),
            "healthz_failed": self.health_failures,
            "request_errors": self.errors,
        })
    }
}

/// Runs `args.rounds` rounds of bursts for the first `changing` orgs and
/// collects every subscriber's latency.
async fn measure_delivery(
    service: &Service,
    orgs: &[String],
    changing: usize,
    subs: &[Subscriber],
    args: &Args,
    label: &str,
) -> anyhow::Result<Delivery> {
    let addr = service.addr;
    let mut d = Delivery::default();
    let expected: Vec<&Subscriber> = subs.iter().filter(|s| s.org < changing).collect();
    let rounds = if args.via == Via::Simulate {
        1
    } else {
        args.rounds.max(1)
    };
    for round in 0..rounds {
        for s in &expected {
            s.seen.changed_at.store(0, Ordering::Relaxed);
        }
        let (cpu_service, cpu_client, cpu_all, window) = (
            service.cpu_secs(),
            own_cpu_secs(),
            machine_busy_secs(),
            Instant::now(),
        );
        let tag = format!("{label}{round}");
        let (health, change) = bursts(addr, &orgs[..changing], args, &tag).await?;
        let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
        while Instant::now() < deadline
            && expected.iter().any(|s| {
                s.seen.changed_at.load(Ordering::Relaxed) == 0
                    && !s.seen.ended.load(Ordering::Relaxed)
            })
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let service_used = service.cpu_secs() - cpu_service;
        let client_used = own_cpu_secs() - cpu_client;
        d.cpu.0 += service_used;
        d.cpu.1 += client_used;
        d.cpu.2 += window.elapsed().as_secs_f64();
        d.cpu_others += (machine_busy_secs() - cpu_all - service_used - client_used).max(0.0);
        if let (Some(path), 0) = (&args.dump_arrivals, round) {
            let path = path.with_extension(label);
            let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
            for s in &expected {
                let (sent, answered) = change.times[s.org];
                let at = s.seen.changed_at.load(Ordering::Relaxed);
                writeln!(
                    f,
                    "{} {} {} {}",
                    orgs[s.org],
                    unix_us(sent),
                    unix_us(answered),
                    unix_us(at)
                )?;
            }
        }
        let first_send = change.times.iter().map(|t| t.0).min().unwrap_or(0);
        let mut last = first_send;
        let mut from_send = Vec::with_capacity(expected.len());
        for s in &expected {
            let at = s.seen.changed_at.load(Ordering::Relaxed);
            let (sent, answered) = change.times[s.org];
            if at == 0 {
                d.lost += 1;
                continue;
            }
            last = last.max(at);
            from_send.push(ms(at as i64 - sent as i64));
            if answered != 0 {
                d.from_200.push(ms(at as i64 - answered as i64));
                if at < answered {
                    d.before_200 += 1;
                }
            }
        }
        let rtt = |b: &Burst| -> Vec<f64> {
            b.times
                .iter()
                .filter(|t| t.1 != 0)
                .map(|t| ms(t.1 as i64 - t.0 as i64))
                .collect()
        };
        let health_rtt = rtt(&health);
        d.round_p99.push(stats(&from_send).p99);
        d.round_health_p99.push(stats(&health_rtt).p99);
        d.health.extend(health_rtt);
        d.change_rtt.extend(rtt(&change));
        d.from_send.extend(from_send);
        d.expected += expected.len();
        d.change_failures += change
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, n)| n)
            .sum::<usize>();
        d.health_failures += health
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, n)| n)
            .sum::<usize>();
        for (e, n) in health.errors.into_iter().chain(change.errors) {
            *d.errors.entry(e).or_default() += n;
        }
        for (status, n) in change.statuses {
            *d.statuses.entry(status).or_default() += n;
        }
        d.wall_ms.push(ms(last as i64 - first_send as i64));
        // Let stray events (there should be none) arrive, and the box calm down.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    d.unexpected = subs
        .iter()
        .filter(|s| s.org >= changing)
        .map(|s| s.seen.events.load(Ordering::Relaxed))
        .sum();
    Ok(d)
}

// ---------------------------------------------------------------- the run

async fn settle_rss(service: &Service, settle: Duration) -> u64 {
    tokio::time::sleep(settle).await;
    service.rss_bytes()
}

async fn run(args: Args, nofile: u64) -> anyhow::Result<()> {
    epoch();
    let service = start_service(&args).await?;
    let settle = Duration::from_millis(args.settle_ms);
    eprintln!(
        "service pid {} on {}; open files limit: bench {nofile}, service {}",
        service.pid(),
        service.addr,
        service.nofile_limit()
    );
    let result = drive(&args, &service, settle).await;
    let log_path = args
        .service_log_file
        .clone()
        .unwrap_or_else(|| service.dir.path().join("service.log"));
    if result.is_err() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "last service log lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    service.stop();
    result
}

struct TabsReport {
    streams: usize,
    open: Duration,
    bytes_per_connection: f64,
    delivery: Delivery,
}

async fn drive(args: &Args, service: &Service, settle: Duration) -> anyhow::Result<()> {
    let addr = service.addr;
    // Baseline: sequential /healthz round trips on one connection.
    let mut conn = Http::connect(addr).await?;
    let mut seq = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        let (status, _) = conn.get("/healthz").await?;
        anyhow::ensure!(status == 200, "/healthz answered {status}");
        seq.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(conn);
    let healthz_sequential = stats(&seq);
    // Warm the stream path once (first-use allocations are not per connection).
    {
        let warm = vec!["warmup-org".to_owned()];
        let (subs, _) = open_streams(addr, &warm, 1, args).await?;
        drop(subs);
    }

    let load_start = loadavg();
    let run_id = unix_now() % 100_000;
    let orgs: Vec<String> = (0..args.connections)
        .map(|i| format!("org-{run_id}-{i}"))
        .collect();
    let rss_start = settle_rss(service, settle).await;
    let mut rss_orgs_loaded = None;
    if args.preload_orgs {
        preload(addr, &orgs, args).await?;
        rss_orgs_loaded = Some(settle_rss(service, settle).await);
    }
    eprintln!("opening {} streams...", orgs.len());
    let (subs, open_time) = open_streams(addr, &orgs, 1, args).await?;
    let rss_idle = settle_rss(service, settle).await;
    let n = args.connections.max(1) as f64;
    let per_conn = (rss_idle as f64 - rss_start as f64) / n;
    let per_conn_stream_only = rss_orgs_loaded.map(|r| (rss_idle as f64 - r as f64) / n);
    let per_org_actor = rss_orgs_loaded.map(|r| (r as f64 - rss_start as f64) / n);
    let threads = service.status_kib("Threads");

    if args.hold_before_burst_secs > 0 {
        eprintln!(
            "holding {} s before the burst (service pid {})",
            args.hold_before_burst_secs,
            service.pid()
        );
        tokio::time::sleep(Duration::from_secs(args.hold_before_burst_secs)).await;
    }
    eprintln!("{} orgs change at once ({:?})...", args.changes, args.via);
    let main = measure_delivery(service, &orgs, args.changes, &subs, args, "fanout").await?;
    if args.hold_after_burst_secs > 0 {
        eprintln!(
            "burst done; holding {} s (service pid {})",
            args.hold_after_burst_secs,
            service.pid()
        );
        tokio::time::sleep(Duration::from_secs(args.hold_after_burst_secs)).await;
    }
    let ended_early = subs
        .iter()
        .filter(|s| s.seen.ended.load(Ordering::Relaxed))
        .count();

    let mut tabs_report = None;
    if args.tabs > 0 && args.tab_orgs > 0 {
        let tab_orgs: Vec<String> = (0..args.tab_orgs)
            .map(|i| format!("tabs-{run_id}-{i}"))
            .collect();
        let rss_before = settle_rss(service, Duration::from_millis(200)).await;
        eprintln!("opening {} orgs x {} tabs...", args.tab_orgs, args.tabs);
        let (tab_subs, open) = open_streams(addr, &tab_orgs, args.tabs, args).await?;
        let rss_after = settle_rss(service, settle).await;
        let delivery =
            measure_delivery(service, &tab_orgs, args.tab_orgs, &tab_subs, args, "tabs").await?;
        tabs_report = Some(TabsReport {
            streams: tab_subs.len(),
            open,
            bytes_per_connection: (rss_after as f64 - rss_before as f64) / tab_subs.len() as f64,
            delivery,
        });
    }
    let load_end = loadavg();
    let rss_end = service.rss_bytes();
    let hwm = service.status_kib("VmHWM") * 1024;
    if let Some(filter) = &args.dump_metrics {
        let mut c = Http::connect(addr).await?;
        let (_, body) = c.get("/metrics").await?;
        let words: Vec<&str> = filter.split('|').collect();
        for line in String::from_utf8_lossy(&body).lines() {
            if !line.starts_with('#') && words.iter().any(|w| line.contains(w)) {
                eprintln!("metrics: {line}");
            }
        }
    }

    // ---- report
    let kib = |b: f64| b / 1024.0;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "stream_fanout: {} idle streams (one org each); {} orgs change at once via {:?}, {} round(s); {} client threads; {cores} cores",
        args.connections, args.changes, args.via, main.round_p99.len(), args.client_threads
    )?;
    writeln!(
        out,
        "  machine load average (1/5/15 min): {load_start} at the start, {load_end} at the end"
    )?;
    writeln!(
        out,
        "  service RSS: start {:.1} MiB, with {} idle streams {:.1} MiB, end {:.1} MiB (peak {:.1} MiB); {} threads",
        mib(rss_start), args.connections, mib(rss_idle), mib(rss_end), mib(hwm), threads
    )?;
    writeln!(
        out,
        "  memory per idle connection: {:.2} KiB (RSS delta / N, incl. the org's actor){}",
        kib(per_conn),
        match (per_org_actor, per_conn_stream_only) {
            (Some(o), Some(s)) =>
                format!("; org actor {:.2} KiB + stream {:.2} KiB", kib(o), kib(s)),
            _ => String::new(),
        }
    )?;
    writeln!(
        out,
        "  opened {} streams in {:.2} s ({:.0}/s); streams ended early: {}",
        args.connections,
        open_time.as_secs_f64(),
        n / open_time.as_secs_f64(),
        ended_early
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "  {:<40} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p90", "p99", "max"
    )?;
    writeln!(
        out,
        "{}",
        healthz_sequential.row("GET /healthz, one at a time")
    )?;
    let change_name = match args.via {
        Via::Webhook => "POST /webhooks/stripe",
        Via::Simulate => "POST simulate-success",
    };
    let section = |out: &mut std::io::StdoutLock,
                   at_once: usize,
                   d: &Delivery|
     -> std::io::Result<()> {
        let (h, s) = (stats(&d.health), stats(&d.from_send));
        writeln!(
            out,
            "{}",
            h.row(&format!("GET /healthz, {at_once} at once"))
        )?;
        writeln!(
            out,
            "{}",
            stats(&d.change_rtt).row(&format!("{change_name}, {at_once} at once"))
        )?;
        writeln!(out, "{}", s.row("  change→browser, from send"))?;
        writeln!(
            out,
            "{}",
            stats(&d.from_200).row("  change→browser, from its 200")
        )?;
        writeln!(
            out,
            "  deliveries {} expected, {} lost, {} before their 200; failed changes {} {:?}; failed healthz {}; stray events {}",
            d.expected, d.lost, d.before_200, d.change_failures, d.statuses, d.health_failures, d.unexpected
        )?;
        if !d.errors.is_empty() {
            writeln!(out, "  request errors: {:?}", d.errors)?;
        }
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            out,
            "  per round: delivery p99 [{}] ms, healthz p99 [{}] ms, all delivered within [{}] ms; p99 = {:.1}x healthz p99",
            list(&d.round_p99), list(&d.round_health_p99), list(&d.wall_ms), s.p99 / h.p99.max(1e-9)
        )?;
        writeln!(
            out,
            "  CPU over {:.2} s of bursts: service {:.2} s, client {:.2} s, other processes {:.2} s ({cores} cores = {:.2} s)",
            d.cpu.2, d.cpu.0, d.cpu.1, d.cpu_others, cores as f64 * d.cpu.2
        )
    };
    section(&mut out, args.changes, &main)?;
    if let Some(t) = &tabs_report {
        writeln!(out)?;
        writeln!(
            out,
            "  multi-tab: {} orgs x {} tabs = {} more streams (opened in {:.2} s), RSS +{:.2} KiB each (after the bursts freed memory, so a lower bound)",
            args.tab_orgs,
            args.tabs,
            t.streams,
            t.open.as_secs_f64(),
            kib(t.bytes_per_connection)
        )?;
        section(&mut out, args.tab_orgs, &t.delivery)?;
    }
    writeln!(out)?;
    let main_p99 = stats(&main.from_send).p99;
    let summary = json!({
        "bench": "stream_fanout",
        "connections": args.connections,
        "changes": args.changes,
        "via": format!("{:?}", args.via).to_lowercase(),
        "client_threads": args.client_threads,
        "cores": cores,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "keep_alive_secs": args.keep_alive_secs,
        "client_queue": args.client_queue,
        "rss_start_bytes": rss_start,
        "rss_idle_bytes": rss_idle,
        "rss_end_bytes": rss_end,
        "rss_peak_bytes": hwm,
        "bytes_per_idle_connection": per_conn.round(),
        "bytes_per_org_actor": per_org_actor.map(f64::round),
        "bytes_per_stream_excl_org_actor": per_conn_stream_only.map(f64::round),
        "service_threads": threads,
        "open_seconds": round3(open_time.as_secs_f64()),
        "streams_ended_early": ended_early,
        "healthz_sequential": healthz_sequential.json(),
        "fanout": main.json(),
        "multi_tab": tabs_report.as_ref().map(|t| json!({
            "orgs": args.tab_orgs,
            "tabs": args.tabs,
            "streams": t.streams,
            "open_seconds": round3(t.open.as_secs_f64()),
            "bytes_per_connection": t.bytes_per_connection.round(),
            "delivery": t.delivery.json(),
        })),
        "meets": {
            "memory_under_16_KiB": (args.connections > 0).then_some(per_conn < 16.0 * 1024.0),
            "p99_from_send_under_50_ms": (!main.from_send.is_empty()).then_some(main_p99 < 50.0),
            "nothing_lost": main.lost == 0 && tabs_report.as_ref().is_none_or(|t| t.delivery.lost == 0),
        },
    });
    writeln!(out, "{summary}")?;
    Ok(())
}

/// GET /v1/entitlements for every org (loads their actors).
async fn preload(addr: SocketAddr, orgs: &[String], args: &Args) -> anyhow::Result<()> {
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(orgs.len());
    for org in orgs {
        let (sem, org) = (sem.clone(), org.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            let mut c = Http::connect(addr).await?;
            let req = c.request("GET", "/v1/entitlements", Some(&token(&org)), "");
            c.send(&req).await?;
            let (status, _) = c.response().await?;
            anyhow::ensure!(status == 200, "GET /v1/entitlements answered {status}");
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
