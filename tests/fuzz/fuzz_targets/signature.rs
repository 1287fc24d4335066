//! `Stripe-Signature` parsing and verification: any header and body, never
//! a panic; a header signed for the body verifies, and only for that body.
//! Input: the header, a newline, then the body.
#![no_main]

use actors::signature::{sign, verify};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "whsec_fuzz";
const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let secrets = [actors::secret::Secret::new(SECRET)];
    if let Ok(header) = std::str::from_utf8(header) {
        // Whatever the header, the answer is a verdict, not a panic; a
        // header the fuzzer made cannot carry this secret's HMAC.
        let _ = verify(Some(header), body, &secrets, 300, NOW);
    }
    let signed = sign(body, SECRET, NOW - 10);
    assert_eq!(verify(Some(&signed), body, &secrets, 300, NOW), Ok(()));
    let mut other = body.to_vec();
    other.push(b'x');
    assert!(verify(Some(&signed), &other, &secrets, 300, NOW).is_err());
    assert!(verify(Some(&signed), body, &secrets, 5, NOW).is_err());
});
