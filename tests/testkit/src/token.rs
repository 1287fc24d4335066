//! Bearer tokens: HS256 JWTs with claims `org` and `exp`, built here rather
//! than with the `jsonwebtoken` crate the service verifies them with, so that
//! a test of the service's checks does not share its library.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// An HS256 JWT for `org` that expires at `exp` (Unix seconds).
pub fn token(secret: &str, org: &str, exp: u64) -> String {
    let header = base64url::encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = base64url::encode(json!({ "org": org, "exp": exp }).to_string().as_bytes());
    let signing_input = format!("{header}.{claims}");
    let signature = jwt_signature(secret, &signing_input);
    format!("{signing_input}.{signature}")
}

/// HMAC-SHA256 of a JWT's signing input, base64url-encoded.
pub fn jwt_signature(secret: &str, signing_input: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(signing_input.as_bytes());
    base64url::encode(&mac.finalize().into_bytes())
}

/// base64url without padding, as JWTs use; small enough to keep here.
pub mod base64url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    /// The bytes of `text`; characters outside the alphabet count as `_`.
    pub fn decode(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            _ => 63,
        };
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in text.bytes() {
            bits = (bits << 6) | u32::from(value(c));
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        out
    }
}
