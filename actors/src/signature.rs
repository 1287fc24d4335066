//! Verification of Stripe's `Stripe-Signature` header.
//!
//! The header is `t=<unix>,v1=<hex>[,v1=<hex>…][,v0=…]`; the signed payload is
//! `"{t}.{raw body}"`, HMAC-SHA256 with the endpoint secret. A request is
//! genuine when any `v1` matches under any configured secret (several while a
//! secret is rotated) and `t` is within the tolerance of now, in either
//! direction (a timestamp from the future is as suspect as a stale one).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Stripe-Signature header is missing")]
    Missing,
    #[error("Stripe-Signature header is malformed")]
    Malformed,
    #[error("Stripe-Signature has no v1 signature")]
    NoV1,
    #[error("Stripe-Signature timestamp is outside the tolerance")]
    OutsideTolerance,
    #[error("no v1 signature matches the payload")]
    Mismatch,
}

/// Checks `header` against `body`. `now` is Unix seconds.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[Secret],
    tolerance_secs: u64,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp: Option<i64> = None;
    let mut signatures: Vec<[u8; 32]> = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" => timestamp = Some(value.parse().map_err(|_| SignatureError::Malformed)?),
            "v1" => {
                let mut sig = [0u8; 32];
                // A v1 that is not 64 hex digits can never match; skip it
                // rather than reject the header, as Stripe's libraries do.
                if hex::decode_to_slice(value, &mut sig).is_ok() {
                    signatures.push(sig);
                }
            }
            _ => {} // v0 and future schemes are not trusted.
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoV1);
    }
    if now.abs_diff(timestamp) > tolerance_secs {
        return Err(SignatureError::OutsideTolerance);
    }
    for secret in secrets {
        let mut mac =
            HmacSha256::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        for sig in &signatures {
            // verify_slice compares in constant time.
            if mac.clone().verify_slice(sig).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

/// Builds a valid header, for tests and tools that sign their own events.
pub fn sign(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1"}"#;

    /// Every other test signs with `sign` and checks with `verify`, which
    /// would agree on a shared mistake; this digest was computed apart
    /// (Python's hmac over `"{t}.{body}"`), as Stripe documents it.
    #[test]
    fn the_signature_is_stripes_hmac_sha256_of_the_timestamp_and_body() {
        assert_eq!(
            sign(BODY, "whsec_known_answer", NOW),
            "t=1700000000,v1=b9a1350d1d8b33e38577292ab22745a18a63d34be6f8d184f8260a8ce35d8796"
        );
        let header =
            "t=1700000000,v1=b9a1350d1d8b33e38577292ab22745a18a63d34be6f8d184f8260a8ce35d8796";
        let secret = [Secret::new("whsec_known_answer")];
        assert_eq!(verify(Some(header), BODY, &secret, 300, NOW), Ok(()));
    }

    fn secrets() -> Vec<Secret> {
        vec![Secret::new("whsec_old"), Secret::new("whsec_new")]
    }

    #[test]
    fn accepts_any_configured_secret() {
        for secret in ["whsec_old", "whsec_new"] {
            let header = sign(BODY, secret, NOW);
            assert_eq!(verify(Some(&header), BODY, &secrets(), 300, NOW), Ok(()));
        }
    }

    #[test]
    fn accepts_when_any_v1_matches() {
        let good = sign(BODY, "whsec_new", NOW);
        let header = format!(
            "t={NOW},v1={},{}",
            "00".repeat(32),
            &good[good.find("v1=").unwrap()..]
        );
        assert_eq!(verify(Some(&header), BODY, &secrets(), 300, NOW), Ok(()));
    }

    #[test]
    fn rejects_other_secret_tampered_body_and_v0_only() {
        let header = sign(BODY, "whsec_other", NOW);
        assert_eq!(
            verify(Some(&header), BODY, &secrets(), 300, NOW),
            Err(SignatureError::Mismatch)
        );
        let header = sign(BODY, "whsec_new", NOW);
        assert_eq!(
            verify(Some(&header), br#"{"id":"evt_2"}"#, &secrets(), 300, NOW),
            Err(SignatureError::Mismatch)
        );
        let v0 = header.replace("v1=", "v0=");
        assert_eq!(
            verify(Some(&v0), BODY, &secrets(), 300, NOW),
            Err(SignatureError::NoV1)
        );
    }

    #[test]
    fn tolerance_applies_in_both_directions() {
        for t in [NOW - 301, NOW + 301] {
            let header = sign(BODY, "whsec_new", t);
            assert_eq!(
                verify(Some(&header), BODY, &secrets(), 300, NOW),
                Err(SignatureError::OutsideTolerance)
            );
        }
        for t in [NOW - 300, NOW + 300] {
            let header = sign(BODY, "whsec_new", t);
            assert_eq!(verify(Some(&header), BODY, &secrets(), 300, NOW), Ok(()));
        }
    }

    #[test]
    fn rejects_missing_and_garbled_headers() {
        assert_eq!(
            verify(None, BODY, &secrets(), 300, NOW),
            Err(SignatureError::Missing)
        );
        for garbled in ["", "garbage", "t=abc,v1=00", "v1=00", "t=1;v1=2"] {
            assert!(
                verify(Some(garbled), BODY, &secrets(), 300, NOW).is_err(),
                "{garbled}"
            );
        }
    }
}
