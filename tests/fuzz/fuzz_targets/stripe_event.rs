//! The webhook event parser: any body gives an event or an `InvalidPayload`,
//! never a panic; an event it accepts has an id and a type.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = actors::stripe_event::parse(data) {
        assert!(!event.id.is_empty());
        assert!(!event.event_type.is_empty());
    }
});
