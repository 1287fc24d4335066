//! The summary table and the final JSON line.

use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use testkit::procfs::CpuSpent;

use crate::baseline::BaselineReport;
use crate::payment_intents::PiReport;
use crate::script::{self, Product};
use crate::subscribers::StreamReport;
use crate::{Args, Ctx};

pub struct Report<'a> {
    pub prefix: &'a str,
    pub seed: u64,
    pub args: &'a Args,
    pub products: &'a [Product],
    pub stats: &'a script::ScriptStats,
    pub expected_actions: usize,
    pub final_seqs: Vec<Option<u64>>,
    pub load_secs: f64,
    pub ctx: &'a Ctx,
    pub pi: Option<PiReport>,
    pub stream: Option<StreamReport>,
    pub baseline: Option<BaselineReport>,
    /// The durable floor (`--floor-url`), run after the baseline.
    pub floor: Option<BaselineReport>,
    /// The service's CPU time over the load phase (`--service-pid`).
    pub service_cpu: Option<CpuSpent>,
}

pub fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 100.0).round() / 100.0
}

pub fn latency_json(h: &Histogram<u64>) -> Value {
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

pub fn row(name: &str, count: u64, rate: Option<f64>, h: &Histogram<u64>) -> String {
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
    pub fn print(self) -> bool {
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
            for b in self.baseline.iter().chain(&self.floor) {
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
            if let (Some(f), Some(bare_rate)) = (&self.floor, baseline_rate) {
                let floor_rate = f.requests as f64 / f.secs;
                println!(
                    "durable floor: {floor_rate:.0} req/s = {:.3} of the bare handler; webhooks = {:.3} of the floor",
                    floor_rate / bare_rate,
                    request_rate / floor_rate
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
        if let Some(cpu) = &self.service_cpu {
            out["serviceCpuUsPerWebhook"] = json!(per_item_us(cpu.total_secs, acked));
            out["serviceCpuUsPerWebhookByThread"] = cpu_by_thread_json(cpu, acked);
        }
        if let Some(b) = &self.baseline {
            out["baseline"] = baseline_json(b);
            out["ratio"] = json!(ratio.map(|r| (r * 1000.0).round() / 1000.0));
        }
        if let Some(f) = &self.floor {
            out["floor"] = baseline_json(f);
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

/// CPU figures to a tenth of a µs: whole µs hid changes of a few percent.
fn tenths(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// CPU µs per item (webhook or request), to a tenth.
fn per_item_us(cpu_secs: f64, items: u64) -> f64 {
    tenths(cpu_secs * 1e6 / items.max(1) as f64)
}

/// CPU µs per item by thread name, for the threads that spent any: where
/// in the process a webhook's cost goes (the HTTP workers, the org arbiters,
/// the SQLite writer...).
fn cpu_by_thread_json(cpu: &CpuSpent, items: u64) -> Value {
    cpu.by_thread_secs
        .iter()
        .map(|(name, secs)| (name.clone(), json!(per_item_us(*secs, items))))
        .filter(|(_, us)| us.as_f64() > Some(0.0))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn baseline_json(b: &BaselineReport) -> Value {
    json!({
        "name": b.name,
        "requests": b.requests,
        "rate": (b.requests as f64 / b.secs).round(),
        "latencyMs": latency_json(&b.latency),
        "cpuUsPerRequest": b.cpu.as_ref().map(|c| per_item_us(c.total_secs, b.requests)),
        "cpuUsPerRequestByThread": b.cpu.as_ref().map(|c| cpu_by_thread_json(c, b.requests)),
    })
}
