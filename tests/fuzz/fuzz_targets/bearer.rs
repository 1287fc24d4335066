//! The bearer token: any `Authorization` value is a token or nothing, and
//! any token is verified or refused, never a panic. A token it accepts names
//! a valid org and has not expired; an org the fuzzer names round-trips
//! through a token issued for it.
#![no_main]

use actors::model::unix_now;
use entitlements::auth::{bearer_token, issue_token, verify_token};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-jwt-secret";

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    if let Some(token) = bearer_token(value) {
        if let Ok(claims) = verify_token(SECRET, token) {
            assert!(actors::stripe::valid_org_id(&claims.org));
            assert!(claims.exp > unix_now());
        }
    }
    if actors::stripe::valid_org_id(value) {
        let token = issue_token(SECRET, value, 60);
        let header = format!("Bearer {token}");
        let claims = verify_token(SECRET, bearer_token(&header).unwrap()).unwrap();
        assert_eq!(claims.org, value);
    }
});
