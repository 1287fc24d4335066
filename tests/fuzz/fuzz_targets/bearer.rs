//! The bearer token: any `Authorization` value is a token or nothing, and
//! any token is verified or refused, never a panic. A token it accepts names
//! a valid org and has not expired; an org the fuzzer names round-trips
//! through a token issued for it.
#![no_main]

use actors::model::unix_now;
use actors::org_id::is_identifier;
use entitlements::auth::{bearer_token, issue_token, verify_token};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-jwt-secret";

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    if let Some(token) = bearer_token(value) {
        if let Ok(caller) = verify_token(SECRET, token) {
            assert!(is_identifier(caller.org_id.as_str()));
            assert!(caller.expires_at > unix_now());
        }
    }
    if is_identifier(value) {
        let token = issue_token(SECRET, value, 60);
        let header = format!("Bearer {token}");
        let caller = verify_token(SECRET, bearer_token(&header).unwrap()).unwrap();
        assert_eq!(caller.org_id.as_str(), value);
    }
});
