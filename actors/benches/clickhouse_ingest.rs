//! Ingest throughput of the PersistenceActor against ClickHouse's own bulk
//! path: the same rows written once by a single `clickhouse-client` INSERT
//! (the best ClickHouse does on this machine) and once through the actor by
//! many concurrent writers that each wait for their ack, the way webhook
//! handlers do. Prints rows/s of both and the ratio actor / client; the goal
//! is at least 0.7.
//!
//!   cargo bench -p actors --bench clickhouse_ingest -- \
//!       [--rows N] [--writers C] [--batch-max-rows B] [--batch-max-ms MS] [--reps R]
//!
//! Needs a ClickHouse server (CLICKHOUSE_URL, default http://127.0.0.1:8123;
//! the client talks the native protocol on the same host, port
//! CLICKHOUSE_NATIVE_PORT, default 9000) and `clickhouse-client` on PATH (or
//! CLICKHOUSE_CLIENT). CLICKHOUSE_USER / CLICKHOUSE_PASSWORD are passed to
//! both sides when set.
//!
//! Each repetition uses fresh tables, created by `ClickHouseStore::migrate`
//! so both sides write the same DDL, checks that each holds exactly N rows
//! and drops them. Sides alternate which goes first, and medians are
//! reported, because a small shared machine is noisy.
//!
//! Reading the numbers: a writer sends its next row only after the previous
//! one is acked, so a batch never holds more rows than there are writers,
//! whatever `--batch-max-rows` says, and every INSERT pays ClickHouse's
//! fixed cost of creating a part. The actor's rows/s is therefore at most
//! writers / (time of one INSERT of that many rows); raise `--writers` to
//! see how close it gets once batches are large.
//!
//! Each side also reports the merge work its rows caused: rows rewritten
//! by background merges per row inserted, and merge time per 1,000 rows,
//! from the server's `MergedRows` / `MergesTimeMilliseconds` counters
//! (`system.events`) between the start of the run and the moment no merge
//! has run on its table for a second. The counters are server-wide, so run
//! it on a server nothing else writes to. ClickHouse's merge selector adds
//! a fixed 5 MiB to every part's size when it weighs a merge, so small parts
//! are merged together, and into the newest larger part, many times over:
//! that, not the INSERT, is most of what a small batch costs the server.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actix::{Actor, System, SystemRunner};
use actors::metrics::Metrics;
use actors::model::{Action, ActionKind, ActionStatus, OrgActorId};
use actors::persistence::{persist, GetStats, PersistenceActor, PersistenceSettings};
use actors::store::{ActionStore, ClickHouseSettings, ClickHouseStore};

const GOAL: f64 = 0.7;
/// Enough orgs that the `(org_id, id)` sort key sees realistic spread.
const ORGS: u64 = 5_000;

struct Args {
    rows: usize,
    writers: usize,
    batch_max_rows: usize,
    batch_max_ms: u64,
    reps: usize,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            rows: 200_000,
            writers: 2_000,
            batch_max_rows: 20_000,
            batch_max_ms: 20,
            reps: 3,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = |name: &str| -> u64 {
                let v = it
                    .next()
                    .unwrap_or_else(|| usage(&format!("{name} needs a value")));
                v.parse()
                    .unwrap_or_else(|_| usage(&format!("{name}: not a number: {v:?}")))
            };
            match flag.as_str() {
                "--rows" => args.rows = value("--rows") as usize,
                "--writers" => args.writers = value("--writers") as usize,
                "--batch-max-rows" => args.batch_max_rows = value("--batch-max-rows") as usize,
                "--batch-max-ms" => args.batch_max_ms = value("--batch-max-ms"),
                "--reps" => args.reps = value("--reps") as usize,
                // `cargo bench` always passes `--bench` to harness-less targets.
                "--bench" => {}
                "-h" | "--help" => usage(""),
                other => usage(&format!("unknown argument {other:?}")),
            }
        }
        if args.rows == 0 || args.writers == 0 || args.batch_max_rows == 0 || args.reps == 0 {
            usage("--rows, --writers, --batch-max-rows and --reps must be positive");
        }
        args
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!(
        "usage: cargo bench -p actors --bench clickhouse_ingest -- \
         [--rows N] [--writers C] [--batch-max-rows B] [--batch-max-ms MS] [--reps R]"
    );
    std::process::exit(2);
}

/// Where and as whom to connect; shared by the actor's store and the client.
struct Server {
    url: String,
    host: String,
    native_port: String,
    user: String,
    password: String,
    client_bin: String,
}

impl Server {
    fn from_env() -> Server {
        let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
        let url = env("CLICKHOUSE_URL", "http://127.0.0.1:8123");
        // scheme://host[:port][/...] → host; enough for a benchmark knob.
        let authority = url.split("://").nth(1).unwrap_or(&url);
        let authority = authority.split('/').next().unwrap_or(authority);
        let host = match authority.rsplit_once(':') {
            Some((h, _)) => h.trim_matches(['[', ']']).to_owned(),
            None => authority.to_owned(),
        };
        Server {
            host,
            native_port: env("CLICKHOUSE_NATIVE_PORT", "9000"),
            user: env("CLICKHOUSE_USER", ""),
            password: env("CLICKHOUSE_PASSWORD", ""),
            client_bin: env("CLICKHOUSE_CLIENT", "clickhouse-client"),
            url,
        }
    }

    fn store(&self, table: &str) -> ActionStore {
        let settings = ClickHouseSettings {
            url: self.url.clone(),
            database: String::new(),
            user: self.user.clone(),
            password: actors::secret::Secret::new(self.password.clone()),
            table: table.to_owned(),
            timeout: Duration::from_secs(60),
        };
        ActionStore::ClickHouse(ClickHouseStore::new(settings).expect("valid ClickHouse settings"))
    }

    fn client(&self) -> Command {
        let mut cmd = Command::new(&self.client_bin);
        cmd.args(["--host", &self.host, "--port", &self.native_port]);
        if !self.user.is_empty() {
            cmd.args(["--user", &self.user]);
        }
        if !self.password.is_empty() {
            cmd.args(["--password", &self.password]);
        }
        cmd
    }

    /// Runs one query through the client and returns its trimmed output.
    fn query(&self, sql: &str) -> String {
        let out = self
            .client()
            .args(["--query", sql])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.client_bin));
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn count(&self, table: &str) -> usize {
        let n = self.query(&format!("SELECT count() FROM `{table}`"));
        n.parse()
            .unwrap_or_else(|_| panic!("count of {table}: {n:?}"))
    }

    /// Server-wide merge counters, for the difference across a run.
    fn merge_work(&self) -> MergeWork {
        let out = self.query(
            "SELECT event, value FROM system.events \
             WHERE event IN ('MergedRows', 'MergesTimeMilliseconds')",
        );
        // An event is absent until it first happens.
        let mut work = MergeWork { rows: 0, ms: 0 };
        for line in out.lines() {
            let (event, value) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("system.events row {line:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("system.events value {line:?}"));
            match event {
                "MergedRows" => work.rows = value,
                _ => work.ms = value,
            }
        }
        work
    }

    /// Returns once no merge of `table` has run for a second (or after two
    /// minutes): the merges a run's parts cause are part of its cost.
    fn wait_for_merges(&self, table: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut quiet_polls = 0;
        while quiet_polls < 4 && Instant::now() < deadline {
            let running = self.query(&format!(
                "SELECT count() FROM system.merges WHERE table = '{table}'"
            ));
            quiet_polls = if running == "0" { quiet_polls + 1 } else { 0 };
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn drop_table(&self, table: &str) {
        let owners = ClickHouseStore::intent_owners_table(table);
        self.query(&format!("DROP TABLE IF EXISTS `{owners}`"));
        self.query(&format!("DROP TABLE IF EXISTS `{table}`"));
    }
}

/// Merge work done by the server (counters from `system.events`).
#[derive(Clone, Copy)]
struct MergeWork {
    rows: u64,
    ms: u64,
}

impl MergeWork {
    /// Work done since `before`, per row inserted: (rows rewritten by
    /// merges per row, merge milliseconds per 1,000 rows).
    fn per_row_since(self, before: MergeWork, rows: usize) -> (f64, f64) {
        let rows = rows as f64;
        (
            self.rows.saturating_sub(before.rows) as f64 / rows,
            self.ms.saturating_sub(before.ms) as f64 * 1000.0 / rows,
        )
    }
}

/// Drops the tables of a run even when a check panics halfway.
struct TableGuard<'a> {
    server: &'a Server,
    table: String,
}

impl Drop for TableGuard<'_> {
    fn drop(&mut self) {
        self.server.drop_table(&self.table);
    }
}

/// Removes the baseline's input file even when a check panics.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// splitmix64: deterministic rows without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Stripe-style suffix: `len` base62 characters.
    fn base62(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        (0..len)
            .map(|_| ALPHABET[self.below(62) as usize] as char)
            .collect()
    }
}

/// Rows shaped like production ones: Stripe-length ids (`pi_…` 27 chars,
/// `evt_…` 28), mostly delivered payments with some failures, refunds,
/// disputes and simulated payments, spread over `ORGS` orgs with a per-org
/// `seq`.
fn generate(rows: usize) -> Vec<Action> {
    const SKUS: &[&str] = &[
        "starter_monthly",
        "pro_monthly",
        "pro_annual",
        "team_seat",
        "storage_100gb",
    ];
    const CURRENCIES: &[&str] = &["usd", "eur", "gbp"];
    let mut rng = Rng(0x5EED);
    let orgs: Vec<String> = (0..ORGS)
        .map(|_| format!("org_{}", rng.base62(20)))
        .collect();
    let mut next_seq = vec![1u64; orgs.len()];
    let start_ms = 1_760_000_000_000i64;
    (0..rows)
        .map(|i| {
            let org = rng.below(ORGS) as usize;
            let seq = next_seq[org];
            next_seq[org] += 1;
            let org_id = orgs[org].clone();
            let roll = rng.below(100);
            let simulated = roll >= 98;
            let (external_id, event_id) = if simulated {
                (format!("pi_simulated_{org_id}_{seq}"), None)
            } else {
                (
                    format!("pi_3{}", rng.base62(24)),
                    Some(format!("evt_1{}", rng.base62(23))),
                )
            };
            let (kind, status, id) = match (roll, &event_id) {
                (0..=79, _) | (_, None) => (
                    ActionKind::Payment,
                    ActionStatus::Delivered,
                    format!("pay_{external_id}"),
                ),
                (80..=89, Some(evt)) => (
                    ActionKind::Payment,
                    ActionStatus::Failed,
                    format!("fail_{evt}"),
                ),
                (90..=96, Some(evt)) => (
                    ActionKind::Refund,
                    ActionStatus::Delivered,
                    format!("refund_{evt}"),
                ),
                (_, Some(evt)) => (
                    ActionKind::Dispute,
                    ActionStatus::Delivered,
                    format!("dispute_{evt}"),
                ),
            };
            Action {
                id,
                org_id,
                seq,
                kind,
                status,
                sku: SKUS[rng.below(SKUS.len() as u64) as usize].to_owned(),
                external_id,
                event_id,
                amount: 500 + rng.below(500_000) as i64,
                currency: CURRENCIES[rng.below(CURRENCIES.len() as u64) as usize].to_owned(),
                created_at_ms: start_ms + i as i64 * 37,
                simulated,
            }
        })
        .collect()
}

/// TabSeparated escaping, so the baseline stays correct for any text.
fn push_tsv(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The rows in the DDL's column order, as the client reads them.
fn write_tsv(rows: &[Action], path: &Path) {
    let mut text = String::with_capacity(rows.len() * 200);
    for a in rows {
        for s in [&a.id, &a.org_id] {
            push_tsv(&mut text, s);
            text.push('\t');
        }
        let _ = write!(
            text,
            "{}\t{}\t{}\t",
            a.seq,
            a.kind.as_str(),
            a.status.as_str()
        );
        for s in [&a.sku, &a.external_id, a.event_id.as_deref().unwrap_or("")] {
            push_tsv(&mut text, s);
            text.push('\t');
        }
        let _ = write!(text, "{}\t", a.amount);
        push_tsv(&mut text, &a.currency);
        let _ = writeln!(text, "\t{}\t{}", a.created_at_ms, u8::from(a.simulated));
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// One bulk INSERT by `clickhouse-client`, timed from spawn to exit: the
/// file already exists and is in the page cache, so only the insert counts.
fn run_client(
    server: &Server,
    system: &SystemRunner,
    tsv: &Path,
    rows: usize,
) -> (Duration, (f64, f64)) {
    let table = format!("bench_baseline_{}", std::process::id());
    let guard = TableGuard {
        server,
        table: table.clone(),
    };
    server.drop_table(&table);
    system
        .block_on(server.store(&table).migrate())
        .expect("create the baseline table");

    let input = std::fs::File::open(tsv).expect("open the TSV file");
    let merges_before = server.merge_work();
    let started = Instant::now();
    let out = server
        .client()
        .args([
            "--query",
            &format!("INSERT INTO `{table}` FORMAT TabSeparated"),
        ])
        .stdin(input)
        .stdout(Stdio::null())
        .output()
        .expect("run clickhouse-client");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "clickhouse-client INSERT failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert_eq!(server.count(&table), rows, "rows in {table}");
    server.wait_for_merges(&table);
    let merges = server.merge_work().per_row_since(merges_before, rows);
    drop(guard);
    (elapsed, merges)
}

struct ActorRun {
    elapsed: Duration,
    batches: u64,
    rows_stored: u64,
    merges: (f64, f64),
}

/// `writers` tasks, each sending its share of the rows one `Persist` at a
/// time and waiting for the ack, timed from the first send to the last ack.
fn run_actor(server: &Server, system: &SystemRunner, rows: &[Action], args: &Args) -> ActorRun {
    let table = format!("bench_actor_{}", std::process::id());
    let guard = TableGuard {
        server,
        table: table.clone(),
    };
    server.drop_table(&table);
    let store = server.store(&table);
    system
        .block_on(store.migrate())
        .expect("create the actor table");

    // Cloned before the clock starts: the actor's callers already own rows.
    let share = rows.len().div_ceil(args.writers);
    let shares: Vec<Vec<Action>> = rows.chunks(share).map(<[Action]>::to_vec).collect();
    let settings = PersistenceSettings {
        batch_max_rows: args.batch_max_rows,
        min_interval: Duration::from_millis(args.batch_max_ms),
        write_timeout: Duration::from_secs(60),
        // Never refuse: every writer may have one row waiting.
        max_pending: args.writers.max(args.batch_max_rows) * 2,
    };

    let merges_before = server.merge_work();
    let (elapsed, stats) = system.block_on(async move {
        // A registry of its own: the bench reads GetStats, not /metrics.
        let addr = PersistenceActor::new(store, settings, Metrics::new()).start();
        let started = Instant::now();
        let writers: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let to = addr.clone().recipient();
                let writer = OrgActorId::next();
                actix::spawn(async move {
                    for action in share {
                        persist(&to, writer, action).await.expect("row not stored");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer panicked");
        }
        let elapsed = started.elapsed();
        let stats = addr
            .send(GetStats)
            .await
            .expect("persistence mailbox closed");
        (elapsed, stats)
    });

    assert_eq!(stats.rows, rows.len() as u64, "rows acked by the actor");
    assert_eq!(stats.failed_batches, 0, "failed batches");
    assert_eq!(server.count(&table), rows.len(), "rows in {table}");
    server.wait_for_merges(&table);
    let merges = server.merge_work().per_row_since(merges_before, rows.len());
    drop(guard);
    ActorRun {
        elapsed,
        batches: stats.batches,
        rows_stored: stats.rows,
        merges,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

fn rate(rows: usize, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

fn main() {
    let args = Args::parse();
    let server = Server::from_env();
    let system = System::new();

    // Fail early and clearly when there is no server or client.
    system
        .block_on(server.store("bench_ping").ping())
        .unwrap_or_else(|e| panic!("ClickHouse at {} does not answer: {e}", server.url));
    let startup_started = Instant::now();
    let version = server.query("SELECT version()");
    let client_startup = startup_started.elapsed();

    let rows = generate(args.rows);
    let tsv_file = TempFile(
        std::env::temp_dir().join(format!("clickhouse_ingest_{}.tsv", std::process::id())),
    );
    let tsv = &tsv_file.0;
    write_tsv(&rows, tsv);
    let tsv_mib = std::fs::metadata(tsv).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64;

    println!(
        "clickhouse_ingest: server {version} at {}; {} rows ({tsv_mib:.1} MiB as TSV), {ORGS} orgs; \
         {} writers, batch_max_rows {}, min_interval {} ms; {} reps",
        server.url, args.rows, args.writers, args.batch_max_rows, args.batch_max_ms, args.reps
    );
    println!(
        "clickhouse-client start-up + `SELECT version()`: {:.1} ms (included in each client run)",
        ms(client_startup)
    );
    println!();
    println!(
        "{:>4}  {:<7}  {:>9}  {:>12}  {:>8}  {:>10}  {:>13}  {:>13}",
        "rep", "side", "ms", "rows/s", "batches", "rows/batch", "merged/row", "merge ms/1k"
    );

    let mut client_rates = Vec::new();
    let mut actor_rates = Vec::new();
    let mut batches = Vec::new();
    let mut client_merged = Vec::new();
    let mut actor_merged = Vec::new();
    let mut client_merge_ms = Vec::new();
    let mut actor_merge_ms = Vec::new();
    for rep in 1..=args.reps {
        // Alternate which side goes first so neither always gets the
        // quieter (or merge-busier) half of a repetition.
        let client_first = rep % 2 == 1;
        for client_turn in [client_first, !client_first] {
            if client_turn {
                let (elapsed, (merged, merge_ms)) = run_client(&server, &system, tsv, args.rows);
                client_rates.push(rate(args.rows, elapsed));
                client_merged.push(merged);
                client_merge_ms.push(merge_ms);
                println!(
                    "{rep:>4}  {:<7}  {:>9.1}  {:>12.0}  {:>8}  {:>10}  {merged:>13.1}  {merge_ms:>13.1}",
                    "client",
                    ms(elapsed),
                    rate(args.rows, elapsed),
                    1,
                    args.rows
                );
            } else {
                let run = run_actor(&server, &system, &rows, &args);
                actor_rates.push(rate(args.rows, run.elapsed));
                batches.push(run.batches as f64);
                let (merged, merge_ms) = run.merges;
                actor_merged.push(merged);
                actor_merge_ms.push(merge_ms);
                println!(
                    "{rep:>4}  {:<7}  {:>9.1}  {:>12.0}  {:>8}  {:>10.1}  {merged:>13.1}  {merge_ms:>13.1}",
                    "actor",
                    ms(run.elapsed),
                    rate(args.rows, run.elapsed),
                    run.batches,
                    run.rows_stored as f64 / run.batches as f64
                );
            }
        }
    }

    let client = median(client_rates);
    let actor = median(actor_rates);
    let batches = median(batches);
    let (client_merged, client_merge_ms) = (median(client_merged), median(client_merge_ms));
    let (actor_merged, actor_merge_ms) = (median(actor_merged), median(actor_merge_ms));
    let ratio = actor / client;
    println!();
    println!(
        "median client rows/s {client:>12.0}   merges rewrote {client_merged:.1} rows per row, \
         {client_merge_ms:.1} ms per 1,000 rows"
    );
    println!(
        "median actor  rows/s {actor:>12.0}   ({batches:.0} batches, {:.1} rows/batch); \
         merges rewrote {actor_merged:.1} rows per row, {actor_merge_ms:.1} ms per 1,000 rows",
        args.rows as f64 / batches
    );
    println!(
        "ratio actor/client   {ratio:>12.3}   goal >= {GOAL}: {}",
        if ratio >= GOAL { "met" } else { "NOT met" }
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "clickhouse_ingest",
            "rows": args.rows,
            "writers": args.writers,
            "batch_max_rows": args.batch_max_rows,
            "batch_max_ms": args.batch_max_ms,
            "reps": args.reps,
            "client_rows_per_sec": client.round(),
            "actor_rows_per_sec": actor.round(),
            "actor_batches": batches,
            "actor_rows_per_batch": (args.rows as f64 / batches * 10.0).round() / 10.0,
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "client_merged_rows_per_row": (client_merged * 10.0).round() / 10.0,
            "actor_merged_rows_per_row": (actor_merged * 10.0).round() / 10.0,
            "client_merge_ms_per_1000_rows": (client_merge_ms * 10.0).round() / 10.0,
            "actor_merge_ms_per_1000_rows": (actor_merge_ms * 10.0).round() / 10.0,
            "goal": GOAL,
            "goal_met": ratio >= GOAL,
        })
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
