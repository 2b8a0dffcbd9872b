//! Fuzz target `admin_body`: arbitrary bytes as the body of each admin publish route
//! (`protocol::decode_admin_body`).
//! The properties checked are `checks::check_admin_body` in `fuzz/checks.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check_admin_body(data));
