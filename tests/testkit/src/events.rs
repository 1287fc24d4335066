//! Stripe events as the service receives them by webhook: a PaymentIntent
//! that succeeded or failed, a charge refunded in full, a dispute opened.

use serde_json::{json, Value};

use crate::unix_now;

pub const SUCCEEDED: &str = "payment_intent.succeeded";
pub const PAYMENT_FAILED: &str = "payment_intent.payment_failed";

/// What a payment is for: the product's SKU and its price.
#[derive(Clone, Copy, Debug)]
pub struct Price<'a> {
    pub sku: &'a str,
    pub amount: i64,
    pub currency: &'a str,
}

/// A `payment_intent.*` event (`event_type`) about `pi`, bought by `org`.
pub fn payment_intent(
    event_id: &str,
    event_type: &str,
    pi: &str,
    org: &str,
    price: &Price,
) -> Value {
    let status = if event_type == SUCCEEDED {
        "succeeded"
    } else {
        "requires_payment_method"
    };
    event(
        event_id,
        event_type,
        json!({
            "id": pi,
            "object": "payment_intent",
            "amount": price.amount,
            "currency": price.currency,
            "status": status,
            "metadata": { "org_id": org, "sku": price.sku }
        }),
    )
}

/// `charge.refunded` for a full refund of `pi`'s charge; `owner` is the org
/// its metadata names (with the price's SKU), `None` for no metadata.
pub fn charge_refunded(event_id: &str, pi: &str, price: &Price, owner: Option<&str>) -> Value {
    event(
        event_id,
        "charge.refunded",
        json!({
            "id": format!("ch_{pi}"),
            "object": "charge",
            "payment_intent": pi,
            "amount": price.amount,
            "amount_refunded": price.amount,
            "refunded": true,
            "currency": price.currency,
            "metadata": metadata(price, owner)
        }),
    )
}

/// `charge.dispute.created` against `pi`'s charge; `owner` as for a refund.
pub fn dispute_created(event_id: &str, pi: &str, price: &Price, owner: Option<&str>) -> Value {
    event(
        event_id,
        "charge.dispute.created",
        json!({
            "id": format!("dp_{pi}"),
            "object": "dispute",
            "charge": format!("ch_{pi}"),
            "payment_intent": pi,
            "amount": price.amount,
            "currency": price.currency,
            "metadata": metadata(price, owner)
        }),
    )
}

fn metadata(price: &Price, owner: Option<&str>) -> Value {
    owner.map_or(json!({}), |org| json!({ "org_id": org, "sku": price.sku }))
}

/// The envelope every event shares, created now.
fn event(event_id: &str, event_type: &str, object: Value) -> Value {
    json!({
        "id": event_id,
        "object": "event",
        "api_version": "2017-08-15",
        "created": unix_now(),
        "livemode": false,
        "type": event_type,
        "data": { "object": object }
    })
}
