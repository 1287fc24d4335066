//! The contract's webhook rules, as pure functions of the ledger a change is
//! decided against and the request: whether it is a duplicate, ignored, or
//! which action to write. No actix, no I/O, no clock (the caller passes the
//! time), so every rule is unit-tested below.

use crate::catalog::Product;
use crate::ledger::Ledger;
use crate::model::{Action, ActionKind, ActionStatus};

use super::messages::{ApplyPayment, ApplyRevocation};

/// What a change comes to.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Its effect is already recorded (or being recorded): nothing is
    /// written, and it is answered once the writes before it are durable.
    Duplicate,
    /// Nothing of ours to record (an unknown SKU): answered at once.
    Ignored,
    /// Write this action.
    Record(Action),
}

/// `payment_intent.succeeded` or `payment_intent.payment_failed`.
pub fn payment(ledger: &Ledger, products: &[Product], r: &ApplyPayment, now_ms: i64) -> Decision {
    // One delivered payment per PaymentIntent, whichever event says so.
    let already_paid = r.succeeded && ledger.intent(&r.payment_intent_id).is_some_and(|i| i.paid);
    if ledger.has_applied_event(&r.event_id) || already_paid {
        return Decision::Duplicate;
    }
    if !products.iter().any(|p| p.sku == r.sku) {
        return Decision::Ignored;
    }
    let (id, status) = if r.succeeded {
        (
            format!("pay_{}", r.payment_intent_id),
            ActionStatus::Delivered,
        )
    } else {
        // Each failed attempt is its own action.
        (format!("fail_{}", r.event_id), ActionStatus::Failed)
    };
    Decision::Record(action(
        ledger,
        id,
        ActionKind::Payment,
        status,
        Money {
            sku: &r.sku,
            payment_intent_id: &r.payment_intent_id,
            event_id: Some(&r.event_id),
            amount: r.amount,
            currency: &r.currency,
        },
        now_ms,
    ))
}

/// `charge.refunded` (in full; a partial refund never reaches the org, see
/// [`crate::stripe_event`]) or `charge.dispute.created`. The event may not
/// name the SKU; the payment it revokes does. A revocation that arrives
/// before its payment is recorded as well: the payment, when it comes,
/// finds its PaymentIntent revoked.
pub fn revocation(
    ledger: &Ledger,
    products: &[Product],
    r: &ApplyRevocation,
    now_ms: i64,
) -> Decision {
    if ledger.has_applied_event(&r.event_id) {
        return Decision::Duplicate;
    }
    let sku = r
        .sku
        .as_deref()
        .or_else(|| ledger.intent(&r.payment_intent_id).map(|i| i.sku.as_str()));
    let Some(sku) = sku.filter(|s| products.iter().any(|p| p.sku == *s)) else {
        return Decision::Ignored;
    };
    Decision::Record(action(
        ledger,
        format!("{}_{}", r.kind.as_str(), r.event_id),
        r.kind,
        ActionStatus::Delivered,
        Money {
            sku,
            payment_intent_id: &r.payment_intent_id,
            event_id: Some(&r.event_id),
            amount: r.amount,
            currency: &r.currency,
        },
        now_ms,
    ))
}

/// The development fallback: the same effect as a successful payment, once.
/// An org already entitled gets no second purchase (it would be charged
/// twice were it real).
pub fn simulation(ledger: &Ledger, product: &Product, now_ms: i64) -> Decision {
    if ledger.is_entitled(&product.sku) {
        return Decision::Duplicate;
    }
    let payment_intent_id = format!("pi_simulated_{}_{}", ledger.org_id(), ledger.next_seq());
    let mut action = action(
        ledger,
        format!("pay_{payment_intent_id}"),
        ActionKind::Payment,
        ActionStatus::Delivered,
        Money {
            sku: &product.sku,
            payment_intent_id: &payment_intent_id,
            event_id: None,
            amount: product.amount,
            currency: &product.currency,
        },
        now_ms,
    );
    action.simulated = true;
    Decision::Record(action)
}

/// Stripe's idempotency key for the org's next purchase of `product`: the
/// same for every attempt at it, so even a restarted service gets Stripe's
/// existing PaymentIntent back; the next purchase after a delivered one
/// (`purchases` counts them) gets a new one.
pub fn purchase_key(org_id: &str, product: &Product, purchases: u32) -> String {
    format!(
        "entitlements:{org_id}:{}:{}{}:{purchases}",
        product.sku, product.amount, product.currency
    )
}

/// What an action records about the money: the product, the PaymentIntent
/// and the event that moved it.
struct Money<'a> {
    sku: &'a str,
    payment_intent_id: &'a str,
    event_id: Option<&'a str>,
    amount: i64,
    currency: &'a str,
}

/// The org's next action, numbered after everything `ledger` holds.
fn action(
    ledger: &Ledger,
    id: String,
    kind: ActionKind,
    status: ActionStatus,
    money: Money<'_>,
    now_ms: i64,
) -> Action {
    Action {
        id,
        org_id: ledger.org_id().to_owned(),
        seq: ledger.next_seq(),
        kind,
        status,
        sku: money.sku.to_owned(),
        external_id: money.payment_intent_id.to_owned(),
        event_id: money.event_id.map(str::to_owned),
        amount: money.amount,
        currency: money.currency.to_owned(),
        created_at_ms: now_ms,
        simulated: false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn products() -> Vec<Product> {
        ["pro", "seats"]
            .into_iter()
            .map(|sku| Product {
                sku: sku.into(),
                name: sku.into(),
                amount: 4900,
                currency: "usd".into(),
            })
            .collect()
    }

    fn ledger() -> Ledger {
        let skus: Arc<[String]> = products().into_iter().map(|p| p.sku).collect();
        Ledger::new("acme".into(), skus)
    }

    fn paid(event_id: &str, payment_intent_id: &str, succeeded: bool) -> ApplyPayment {
        ApplyPayment {
            event_id: event_id.into(),
            payment_intent_id: payment_intent_id.into(),
            sku: "pro".into(),
            succeeded,
            amount: 4900,
            currency: "usd".into(),
        }
    }

    fn refunded(event_id: &str, payment_intent_id: &str, sku: Option<&str>) -> ApplyRevocation {
        ApplyRevocation {
            event_id: event_id.into(),
            kind: ActionKind::Refund,
            payment_intent_id: payment_intent_id.into(),
            sku: sku.map(str::to_owned),
            amount: 4900,
            currency: "usd".into(),
            log_checked: false,
        }
    }

    /// Decides and, when it records, folds the action in as a durable
    /// write would.
    fn record(ledger: &mut Ledger, decide: impl FnOnce(&Ledger) -> Decision) -> Action {
        let decision = decide(ledger);
        let Decision::Record(action) = decision else {
            panic!("expected an action, got {decision:?}");
        };
        ledger.fold(&action);
        action
    }

    #[test]
    fn a_successful_payment_is_one_delivered_action_named_after_its_payment_intent() {
        let mut l = ledger();
        let action = record(&mut l, |l| {
            payment(l, &products(), &paid("evt_1", "pi_1", true), NOW)
        });
        assert_eq!(action.id, "pay_pi_1");
        assert_eq!(
            (action.kind, action.status),
            (ActionKind::Payment, ActionStatus::Delivered)
        );
        assert_eq!((action.seq, action.org_id.as_str()), (1, "acme"));
        assert_eq!(action.event_id.as_deref(), Some("evt_1"));
        assert_eq!((action.created_at_ms, action.simulated), (NOW, false));
        assert!(l.is_entitled("pro"));
    }

    #[test]
    fn the_same_event_again_is_a_duplicate() {
        let mut l = ledger();
        record(&mut l, |l| {
            payment(l, &products(), &paid("evt_1", "pi_1", false), NOW)
        });
        assert_eq!(
            payment(&l, &products(), &paid("evt_1", "pi_1", false), NOW),
            Decision::Duplicate
        );
        record(&mut l, |l| {
            revocation(l, &products(), &refunded("evt_r", "pi_1", None), NOW)
        });
        assert_eq!(
            revocation(&l, &products(), &refunded("evt_r", "pi_1", None), NOW),
            Decision::Duplicate
        );
    }

    #[test]
    fn a_second_succeeded_event_of_one_payment_intent_is_a_duplicate() {
        let mut l = ledger();
        record(&mut l, |l| {
            payment(l, &products(), &paid("evt_1", "pi_1", true), NOW)
        });
        assert_eq!(
            payment(&l, &products(), &paid("evt_2", "pi_1", true), NOW),
            Decision::Duplicate
        );
        // Another PaymentIntent of the same SKU is another purchase.
        let other = record(&mut l, |l| {
            payment(l, &products(), &paid("evt_3", "pi_2", true), NOW)
        });
        assert_eq!((other.id.as_str(), other.seq), ("pay_pi_2", 2));
    }

    #[test]
    fn each_failed_attempt_is_its_own_action() {
        let mut l = ledger();
        let first = record(&mut l, |l| {
            payment(l, &products(), &paid("evt_1", "pi_1", false), NOW)
        });
        let second = record(&mut l, |l| {
            payment(l, &products(), &paid("evt_2", "pi_1", false), NOW)
        });
        assert_eq!((first.id.as_str(), first.seq), ("fail_evt_1", 1));
        assert_eq!((second.id.as_str(), second.seq), ("fail_evt_2", 2));
        assert_eq!(first.status, ActionStatus::Failed);
        assert!(!l.is_entitled("pro"));
        // A success after failures still delivers.
        let success = record(&mut l, |l| {
            payment(l, &products(), &paid("evt_3", "pi_1", true), NOW)
        });
        assert_eq!((success.id.as_str(), success.seq), ("pay_pi_1", 3));
        assert!(l.is_entitled("pro"));
    }

    #[test]
    fn a_refund_before_its_payment_is_recorded_and_still_wins() {
        let mut l = ledger();
        let refund = record(&mut l, |l| {
            revocation(l, &products(), &refunded("evt_r", "pi_1", Some("pro")), NOW)
        });
        assert_eq!(refund.id, "refund_evt_r");
        assert_eq!(
            (refund.kind, refund.status),
            (ActionKind::Refund, ActionStatus::Delivered)
        );
        record(&mut l, |l| {
            payment(l, &products(), &paid("evt_p", "pi_1", true), NOW)
        });
        assert!(
            !l.is_entitled("pro"),
            "the refund that came first still revokes"
        );
    }

    #[test]
    fn a_dispute_revokes_the_sku_its_payment_paid_for() {
        let mut l = ledger();
        record(&mut l, |l| {
            payment(l, &products(), &paid("evt_p", "pi_1", true), NOW)
        });
        let dispute = ApplyRevocation {
            kind: ActionKind::Dispute,
            ..refunded("evt_d", "pi_1", None)
        };
        let action = record(&mut l, |l| revocation(l, &products(), &dispute, NOW));
        assert_eq!(
            (action.id.as_str(), action.sku.as_str()),
            ("dispute_evt_d", "pro")
        );
        assert!(!l.is_entitled("pro"));
    }

    #[test]
    fn a_revocation_naming_no_known_sku_is_ignored() {
        let l = ledger();
        // No SKU in the event and no payment to learn it from.
        assert_eq!(
            revocation(&l, &products(), &refunded("evt_r", "pi_1", None), NOW),
            Decision::Ignored
        );
        // A SKU that is not configured.
        assert_eq!(
            revocation(
                &l,
                &products(),
                &refunded("evt_r", "pi_1", Some("gold")),
                NOW
            ),
            Decision::Ignored
        );
    }

    #[test]
    fn a_payment_for_an_unknown_sku_is_ignored() {
        let l = ledger();
        let r = ApplyPayment {
            sku: "gold".into(),
            ..paid("evt_1", "pi_1", true)
        };
        assert_eq!(payment(&l, &products(), &r, NOW), Decision::Ignored);
    }

    #[test]
    fn a_simulated_payment_entitles_once() {
        let mut l = ledger();
        let pro = &products()[0];
        let action = record(&mut l, |l| simulation(l, pro, NOW));
        assert_eq!(action.id, "pay_pi_simulated_acme_1");
        assert!(action.simulated && action.event_id.is_none());
        assert_eq!((action.amount, action.currency.as_str()), (4900, "usd"));
        assert!(l.is_entitled("pro"));
        assert_eq!(simulation(&l, pro, NOW), Decision::Duplicate);
    }

    #[test]
    fn the_purchase_key_is_one_per_purchase() {
        let pro = &products()[0];
        assert_eq!(purchase_key("acme", pro, 0), purchase_key("acme", pro, 0));
        assert_ne!(purchase_key("acme", pro, 0), purchase_key("acme", pro, 1));
        assert_ne!(purchase_key("acme", pro, 0), purchase_key("acme2", pro, 0));
        let repriced = Product {
            amount: 5900,
            ..pro.clone()
        };
        assert_ne!(
            purchase_key("acme", pro, 0),
            purchase_key("acme", &repriced, 0)
        );
    }
}
