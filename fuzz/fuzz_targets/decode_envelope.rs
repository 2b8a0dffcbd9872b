//! Fuzz target `decode_envelope`: arbitrary bytes as a payload received on a Redis channel, for
//! each kind of target (`protocol::decode_envelope`, `encode_envelope`, `Envelope::frame`).
//! The properties checked are `checks::check_decode_envelope` in `fuzz/checks.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check_decode_envelope(data));
