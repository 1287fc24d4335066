//! What the load sends, and what it must mean: per org, a script of signed
//! Stripe events (chains, one per payment) and the model of the actions and
//! entitlements those events imply whatever order they arrive in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use testkit::events::{self, Price};

/// A product as `GET /v1/billing/products` lists it.
#[derive(Clone, Debug)]
pub struct Product {
    pub sku: String,
    pub amount: i64,
    pub currency: String,
}

impl Product {
    pub fn price(&self) -> Price<'_> {
        Price {
            sku: &self.sku,
            amount: self.amount,
            currency: &self.currency,
        }
    }
}

/// Shares of the load shape, each in 0..=1.
#[derive(Clone, Debug)]
pub struct Shape {
    pub payments: usize,
    pub fail_share: f64,
    pub refund_share: f64,
    pub no_metadata_share: f64,
    pub duplicate_share: f64,
    pub out_of_order_share: f64,
    /// Also send metadata-less refunds before their payment (the service can
    /// only find their org through the recorded payment).
    pub bare_early_refunds: bool,
}

/// One Stripe event, serialised once; signed afresh at each delivery.
#[derive(Debug)]
pub struct Event {
    pub id: String,
    pub kind: &'static str,
    /// The service's deterministic id of the action this event records.
    pub action_id: String,
    pub body: Bytes,
}

/// A delivery: `copies` = 2 sends the same event twice at once.
#[derive(Clone, Debug)]
pub struct Step {
    pub event: Arc<Event>,
    pub copies: usize,
}

/// One payment's events for one org, delivered in order (one at a time).
#[cfg_attr(not(test), allow(dead_code))] // `org` groups chains in the tests
#[derive(Debug)]
pub struct Chain {
    pub org: usize,
    pub steps: Vec<Step>,
}

/// An action the model expects the service to have recorded.
#[derive(Clone, Debug)]
pub struct ExpectedAction {
    pub kind: &'static str,
    pub status: &'static str,
    pub sku: String,
    pub external_id: String,
    /// Any of these may be the recorded `eventId` (a PaymentIntent's success
    /// may be told by two events; the first recorded wins).
    pub event_ids: BTreeSet<String>,
}

/// What one org's events mean.
#[derive(Clone, Debug, Default)]
pub struct OrgModel {
    pub actions: BTreeMap<String, ExpectedAction>,
    pub entitlements: BTreeMap<String, bool>,
}

/// Counts of what the script holds, for the report.
#[derive(Clone, Debug, Default)]
pub struct ScriptStats {
    pub events: usize,
    pub deliveries: usize,
    pub duplicates: usize,
    pub out_of_order: usize,
    pub refunds: usize,
    pub bare_refunds: usize,
    pub failed_attempts: usize,
}

/// SplitMix64: small, seeded, good enough to pick shares.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

pub fn org_id(prefix: &str, o: usize) -> String {
    format!("{prefix}-{o}")
}

/// Builds every org's chains and model. Chains are ordered payment-major
/// (every org's first payment, then every org's second...), so the
/// concurrent window always spans many orgs.
pub fn build(
    prefix: &str,
    orgs: usize,
    products: &[Product],
    shape: &Shape,
    rng: &mut Rng,
) -> (Vec<Chain>, Vec<OrgModel>, ScriptStats) {
    let mut models: Vec<OrgModel> = (0..orgs)
        .map(|_| OrgModel {
            actions: BTreeMap::new(),
            entitlements: products.iter().map(|p| (p.sku.clone(), false)).collect(),
        })
        .collect();
    let mut stats = ScriptStats::default();
    let mut chains = Vec::with_capacity(orgs * shape.payments);
    for j in 0..shape.payments {
        for (o, model) in models.iter_mut().enumerate() {
            let chain = payment_chain(prefix, o, j, products, shape, rng, model, &mut stats);
            chains.push(chain);
        }
    }
    (chains, models, stats)
}

#[allow(clippy::too_many_arguments)]
fn payment_chain(
    prefix: &str,
    o: usize,
    j: usize,
    products: &[Product],
    shape: &Shape,
    rng: &mut Rng,
    model: &mut OrgModel,
    stats: &mut ScriptStats,
) -> Chain {
    let org = org_id(prefix, o);
    let product = &products[(o + j) % products.len()];
    let pi = format!("pi_{}_{j}", org.replace('-', "_"));
    let base = format!("evt_{}_{j}", org.replace('-', "_"));

    let failures = if rng.chance(shape.fail_share) {
        1 + rng.below(2) as usize
    } else {
        0
    };
    // A quarter of the payments that failed at first are abandoned.
    let succeeds = failures == 0 || !rng.chance(0.25);
    let refund = succeeds && rng.chance(shape.refund_share);
    let out_of_order = rng.chance(shape.out_of_order_share);
    let mut bare = refund && rng.chance(shape.no_metadata_share);
    if bare && out_of_order && !shape.bare_early_refunds {
        bare = false;
    }

    let mut failed_events = Vec::new();
    for k in 0..failures {
        let id = format!("{base}_f{k}");
        let body = payment_intent_event(&id, events::PAYMENT_FAILED, &pi, &org, product);
        let action_id = format!("fail_{id}");
        model.actions.insert(
            action_id.clone(),
            ExpectedAction {
                kind: "payment",
                status: "failed",
                sku: product.sku.clone(),
                external_id: pi.clone(),
                event_ids: BTreeSet::from([id.clone()]),
            },
        );
        failed_events.push(Arc::new(Event {
            id,
            kind: "payment_failed",
            action_id,
            body,
        }));
        stats.failed_attempts += 1;
    }
    let success = succeeds.then(|| {
        let id = format!("{base}_s");
        let body = payment_intent_event(&id, events::SUCCEEDED, &pi, &org, product);
        let action_id = format!("pay_{pi}");
        model.actions.insert(
            action_id.clone(),
            ExpectedAction {
                kind: "payment",
                status: "delivered",
                sku: product.sku.clone(),
                external_id: pi.clone(),
                event_ids: BTreeSet::from([id.clone()]),
            },
        );
        Arc::new(Event {
            id,
            kind: "succeeded",
            action_id,
            body,
        })
    });
    let refund_event = refund.then(|| {
        let id = format!("{base}_r");
        let owner = (!bare).then_some(org.as_str());
        let body = refunded_event(&id, &pi, product, owner);
        let action_id = format!("refund_{id}");
        model.actions.insert(
            action_id.clone(),
            ExpectedAction {
                kind: "refund",
                status: "delivered",
                sku: product.sku.clone(),
                external_id: pi.clone(),
                event_ids: BTreeSet::from([id.clone()]),
            },
        );
        stats.refunds += 1;
        if bare {
            stats.bare_refunds += 1;
        }
        Arc::new(Event {
            id,
            kind: "refunded",
            action_id,
            body,
        })
    });
    if succeeds && !refund {
        model.entitlements.insert(product.sku.clone(), true);
    }

    // Delivery order: failures, success, refund; or, out of order, the
    // refund first and the failed attempts after the success.
    let mut order: Vec<Arc<Event>> = Vec::new();
    let reordered = out_of_order && (refund_event.is_some() || (succeeds && failures > 0));
    if reordered {
        stats.out_of_order += 1;
        order.extend(refund_event.clone());
        order.extend(success.clone());
        order.extend(failed_events.iter().rev().cloned());
    } else {
        order.extend(failed_events.iter().cloned());
        order.extend(success.clone());
        order.extend(refund_event.clone());
    }

    let mut steps = Vec::new();
    let mut later = Vec::new();
    for event in order {
        stats.events += 1;
        let mut copies = 1;
        if rng.chance(shape.duplicate_share) {
            stats.duplicates += 1;
            let modes = if event.kind == "succeeded" { 3 } else { 2 };
            match rng.below(modes) {
                0 => copies = 2,
                1 => later.push(Step {
                    event: event.clone(),
                    copies: 1,
                }),
                _ => {
                    // The same PaymentIntent's success told again by another event.
                    let id = format!("{}_again", event.id);
                    let body = payment_intent_event(&id, events::SUCCEEDED, &pi, &org, product);
                    if let Some(a) = model.actions.get_mut(&event.action_id) {
                        a.event_ids.insert(id.clone());
                    }
                    stats.events += 1;
                    later.push(Step {
                        event: Arc::new(Event {
                            id,
                            kind: "succeeded",
                            action_id: event.action_id.clone(),
                            body,
                        }),
                        copies: 1,
                    });
                }
            }
        }
        steps.push(Step { event, copies });
    }
    steps.extend(later);
    stats.deliveries += steps.iter().map(|s| s.copies).sum::<usize>();
    Chain { org: o, steps }
}

fn payment_intent_event(id: &str, kind: &str, pi: &str, org: &str, product: &Product) -> Bytes {
    to_body(events::payment_intent(id, kind, pi, org, &product.price()))
}

/// `charge.refunded`, fully refunded; `owner` = the org its metadata names.
fn refunded_event(id: &str, pi: &str, product: &Product, owner: Option<&str>) -> Bytes {
    to_body(events::charge_refunded(id, pi, &product.price(), owner))
}

fn to_body(v: Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&v).expect("JSON values serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn products() -> Vec<Product> {
        vec![
            Product {
                sku: "a".into(),
                amount: 100,
                currency: "usd".into(),
            },
            Product {
                sku: "b".into(),
                amount: 200,
                currency: "usd".into(),
            },
        ]
    }

    #[test]
    fn model_counts_one_action_per_fact() {
        let shape = Shape {
            payments: 20,
            fail_share: 0.5,
            refund_share: 0.5,
            no_metadata_share: 0.5,
            duplicate_share: 0.5,
            out_of_order_share: 0.5,
            bare_early_refunds: false,
        };
        let (chains, models, stats) = build("t", 5, &products(), &shape, &mut Rng::new(7));
        assert_eq!(chains.len(), 100);
        assert!(stats.duplicates > 0 && stats.out_of_order > 0 && stats.refunds > 0);
        for (o, model) in models.iter().enumerate() {
            let ids: BTreeSet<&str> = chains
                .iter()
                .filter(|c| c.org == o)
                .flat_map(|c| c.steps.iter().map(|s| s.event.action_id.as_str()))
                .collect();
            let expected: BTreeSet<&str> = model.actions.keys().map(String::as_str).collect();
            assert_eq!(ids, expected);
        }
    }
}
