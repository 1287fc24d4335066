//! Stripe webhook events, parsed into small structs holding only the fields
//! the service uses. Typed Stripe event structs break whenever an account's
//! API version differs from the library's; these depend on a handful of
//! fields that have been stable since 2017.

use std::collections::HashMap;

use serde::Deserialize;

/// What a verified event asks of the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeEvent {
    pub id: String,
    pub event_type: String,
    pub effect: EventEffect,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventEffect {
    /// `payment_intent.succeeded`
    PaymentSucceeded(PaymentIntentFacts),
    /// `payment_intent.payment_failed`
    PaymentFailed(PaymentIntentFacts),
    /// `charge.refunded` (fully refunded) or `charge.dispute.created`.
    Revoked(RevocationFacts),
    /// A refund or dispute whose object cannot be read and names no org:
    /// ours (400) only if its PaymentIntent is, else another integration's.
    Unreadable {
        payment_intent_id: Option<String>,
        reason: String,
    },
    /// A type the service does not act on, a partial refund, or a
    /// PaymentIntent event without our metadata that cannot be read.
    Ignored,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentIntentFacts {
    pub payment_intent_id: String,
    pub org_id: Option<String>,
    pub sku: Option<String>,
    pub amount: i64,
    pub currency: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationKind {
    Refund,
    Dispute,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationFacts {
    pub kind: RevocationKind,
    /// `None` when the charge or dispute names no PaymentIntent.
    pub payment_intent_id: Option<String>,
    pub org_id: Option<String>,
    pub sku: Option<String>,
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a Stripe event: {0}")]
pub struct InvalidPayload(pub String);

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    object: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct RawPaymentIntent {
    id: String,
    amount: i64,
    currency: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

#[derive(Deserialize)]
struct RawCharge {
    #[serde(default)]
    payment_intent: Option<String>,
    amount: i64,
    #[serde(default)]
    amount_refunded: Option<i64>,
    refunded: bool,
    currency: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

#[derive(Deserialize)]
struct RawDispute {
    #[serde(default)]
    payment_intent: Option<String>,
    amount: i64,
    currency: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

pub fn parse(body: &[u8]) -> Result<StripeEvent, InvalidPayload> {
    let raw: RawEvent = serde_json::from_slice(body).map_err(|e| InvalidPayload(e.to_string()))?;
    if raw.id.is_empty() || raw.event_type.is_empty() {
        return Err(InvalidPayload("empty id or type".into()));
    }
    // An object that cannot be read is refused (400, Stripe retries) only
    // when it names one of our orgs; an account serves other integrations
    // too, whose events must be acknowledged whatever their objects lack.
    let org_named = raw
        .data
        .object
        .get("metadata")
        .and_then(|m| m.get("org_id"))
        .is_some_and(serde_json::Value::is_string);
    let payment_intent = raw
        .data
        .object
        .get("payment_intent")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let object = serde_json::Value::Object(raw.data.object);
    let event_type = raw.event_type.clone();
    let bad_object = |e: serde_json::Error| {
        let reason = format!("{event_type}: {e}");
        match (org_named, event_type.starts_with("payment_intent.")) {
            (true, _) => Err(InvalidPayload(reason)),
            // A PaymentIntent of ours always carries our metadata.
            (false, true) => Ok(EventEffect::Ignored),
            (false, false) => Ok(EventEffect::Unreadable {
                payment_intent_id: payment_intent.clone(),
                reason,
            }),
        }
    };
    let finish = |effect| {
        Ok(StripeEvent {
            id: raw.id.clone(),
            event_type: raw.event_type.clone(),
            effect,
        })
    };
    let effect = match raw.event_type.as_str() {
        "payment_intent.succeeded" | "payment_intent.payment_failed" => {
            let pi: RawPaymentIntent = match serde_json::from_value(object) {
                Ok(pi) => pi,
                Err(e) => return finish(bad_object(e)?),
            };
            let facts = PaymentIntentFacts {
                org_id: pi.metadata.get("org_id").cloned(),
                sku: pi.metadata.get("sku").cloned(),
                payment_intent_id: pi.id,
                amount: pi.amount,
                currency: pi.currency,
            };
            if raw.event_type == "payment_intent.succeeded" {
                EventEffect::PaymentSucceeded(facts)
            } else {
                EventEffect::PaymentFailed(facts)
            }
        }
        "charge.refunded" => {
            let charge: RawCharge = match serde_json::from_value(object) {
                Ok(charge) => charge,
                Err(e) => return finish(bad_object(e)?),
            };
            let fully_refunded =
                charge.refunded && charge.amount_refunded.is_none_or(|r| r >= charge.amount);
            if fully_refunded {
                EventEffect::Revoked(RevocationFacts {
                    kind: RevocationKind::Refund,
                    payment_intent_id: charge.payment_intent,
                    org_id: charge.metadata.get("org_id").cloned(),
                    sku: charge.metadata.get("sku").cloned(),
                    amount: charge.amount_refunded.unwrap_or(charge.amount),
                    currency: charge.currency,
                })
            } else {
                EventEffect::Ignored
            }
        }
        "charge.dispute.created" => {
            let dispute: RawDispute = match serde_json::from_value(object) {
                Ok(dispute) => dispute,
                Err(e) => return finish(bad_object(e)?),
            };
            EventEffect::Revoked(RevocationFacts {
                kind: RevocationKind::Dispute,
                payment_intent_id: dispute.payment_intent,
                org_id: dispute.metadata.get("org_id").cloned(),
                sku: dispute.metadata.get("sku").cloned(),
                amount: dispute.amount,
                currency: dispute.currency,
            })
        }
        _ => EventEffect::Ignored,
    };
    finish(effect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_succeeded_payment_intent() {
        let body = br#"{"id":"evt_1","object":"event","api_version":"2017-08-15","type":"payment_intent.succeeded",
            "data":{"object":{"id":"pi_1","object":"payment_intent","amount":99900,"currency":"usd",
            "metadata":{"org_id":"acme","sku":"compliance-pack"},"charges":{"data":[]}}}}"#;
        let event = parse(body).unwrap();
        assert_eq!(event.id, "evt_1");
        assert_eq!(
            event.effect,
            EventEffect::PaymentSucceeded(PaymentIntentFacts {
                payment_intent_id: "pi_1".into(),
                org_id: Some("acme".into()),
                sku: Some("compliance-pack".into()),
                amount: 99900,
                currency: "usd".into(),
            })
        );
    }

    #[test]
    fn unreadable_objects_are_refused_only_when_they_name_our_org() {
        let ours = br#"{"id":"evt_u1","type":"charge.refunded","data":{"object":{"id":"ch_1",
            "payment_intent":"pi_1","metadata":{"org_id":"acme"}}}}"#;
        assert!(parse(ours).is_err());
        let foreign_intent = br#"{"id":"evt_u2","type":"payment_intent.succeeded",
            "data":{"object":{"id":"pi_9","metadata":{}}}}"#;
        assert_eq!(parse(foreign_intent).unwrap().effect, EventEffect::Ignored);
        let unnamed_charge = br#"{"id":"evt_u3","type":"charge.dispute.created",
            "data":{"object":{"id":"dp_1","payment_intent":"pi_7"}}}"#;
        match parse(unnamed_charge).unwrap().effect {
            EventEffect::Unreadable {
                payment_intent_id, ..
            } => assert_eq!(payment_intent_id.as_deref(), Some("pi_7")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_refund_is_ignored_and_full_refund_revokes() {
        let partial = br#"{"id":"evt_2","type":"charge.refunded","data":{"object":{"id":"ch_1","payment_intent":"pi_1",
            "amount":1000,"amount_refunded":500,"refunded":false,"currency":"usd"}}}"#;
        assert_eq!(parse(partial).unwrap().effect, EventEffect::Ignored);
        let full = br#"{"id":"evt_3","type":"charge.refunded","data":{"object":{"id":"ch_1","payment_intent":"pi_1",
            "amount":1000,"amount_refunded":1000,"refunded":true,"currency":"usd","metadata":{}}}}"#;
        match parse(full).unwrap().effect {
            EventEffect::Revoked(r) => {
                assert_eq!(r.kind, RevocationKind::Refund);
                assert_eq!(r.payment_intent_id.as_deref(), Some("pi_1"));
                assert_eq!(r.org_id, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_types_are_ignored_but_non_events_are_invalid() {
        let other = br#"{"id":"evt_4","type":"customer.created","data":{"object":{"id":"cus_1"}}}"#;
        assert_eq!(parse(other).unwrap().effect, EventEffect::Ignored);
        for body in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"id":"evt_5","type":"x"}"#,
            // Names our org, but has no amount: ours and unreadable.
            br#"{"id":"evt_6","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1",
                "metadata":{"org_id":"acme","sku":"pack"}}}}"#,
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
