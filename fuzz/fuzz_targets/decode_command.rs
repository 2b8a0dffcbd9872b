//! Fuzz target `decode_command`: arbitrary bytes as one client text frame
//! (`protocol::decode_command`).
//! The properties checked are `checks::check_decode_command` in `fuzz/checks.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check_decode_command(data));
