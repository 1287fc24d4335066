//! The action: one recorded fact about an org's purchases. Everything else
//! (entitlements, `seq`, applied ids) is derived from the org's actions.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Payment,
    Refund,
    Dispute,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Payment => "payment",
            ActionKind::Refund => "refund",
            ActionKind::Dispute => "dispute",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "payment" => Some(ActionKind::Payment),
            "refund" => Some(ActionKind::Refund),
            "dispute" => Some(ActionKind::Dispute),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Delivered,
    Failed,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Delivered => "delivered",
            ActionStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delivered" => Some(ActionStatus::Delivered),
            "failed" => Some(ActionStatus::Failed),
            _ => None,
        }
    }
}

/// One org actor's lifetime. An org whose actor stopped gets a new actor
/// with a new id, so what the old one set going (rows still on their way to
/// the store, claims on PaymentIntents) is told apart from the new one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrgActorId(u64);

impl OrgActorId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One row of the action log, as stored and as served by `GET /v1/actions`.
///
/// `id` is deterministic (derived from the Stripe event or PaymentIntent) so a
/// batch written twice leaves one logical row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    pub id: String,
    #[serde(skip_serializing)]
    pub org_id: String,
    pub seq: u64,
    pub kind: ActionKind,
    pub status: ActionStatus,
    pub sku: String,
    /// The PaymentIntent the action is about.
    pub external_id: String,
    /// The Stripe event that caused it; `None` for simulated payments.
    pub event_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    #[serde(rename = "createdAt", serialize_with = "rfc3339::serialize")]
    pub created_at_ms: i64,
    pub simulated: bool,
}

#[cfg(test)]
impl Action {
    /// A simulated, delivered payment of `org_id`, for tests of the stores
    /// and the actors in front of them.
    pub(crate) fn test_payment(org_id: &str, id: &str, seq: u64) -> Self {
        Action {
            id: id.into(),
            org_id: org_id.into(),
            seq,
            kind: ActionKind::Payment,
            status: ActionStatus::Delivered,
            sku: "pro".into(),
            external_id: format!("pi_{id}"),
            event_id: None,
            amount: 100,
            currency: "usd".into(),
            created_at_ms: now_ms(),
            simulated: true,
        }
    }
}

/// Milliseconds since the Unix epoch, rendered as RFC 3339 UTC without a
/// date-time crate: the civil-from-days algorithm is a dozen lines.
mod rfc3339 {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*ms))
    }

    pub fn format(ms: i64) -> String {
        let secs = ms.div_euclid(1000);
        let millis = ms.rem_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        )
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn formats_known_instants() {
            assert_eq!(super::format(0), "1970-01-01T00:00:00.000Z");
            assert_eq!(super::format(951_782_400_123), "2000-02-29T00:00:00.123Z");
            assert_eq!(super::format(1_795_724_372_500), "2026-11-26T20:19:32.500Z");
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix time in whole seconds, as Stripe's timestamps and JWT `exp` count it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
