//! `Stripe-Signature` headers for webhook bodies, made by the service's own
//! signer (`actors::signature::sign`).

pub use actors::signature::sign;

use crate::unix_now;

/// A header for `body` signed with `secret` now, as Stripe sends it.
pub fn sign_now(body: &[u8], secret: &str) -> String {
    sign(body, secret, unix_now() as i64)
}

/// The hex `v1` signature alone, for a header a test assembles itself.
pub fn v1_signature(body: &[u8], secret: &str, timestamp: i64) -> String {
    let header = sign(body, secret, timestamp);
    let (_, v1) = header
        .split_once(",v1=")
        .expect("sign writes t=<timestamp>,v1=<hex>");
    v1.to_owned()
}
