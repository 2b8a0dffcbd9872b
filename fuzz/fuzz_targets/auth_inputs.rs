//! Fuzz target `auth_inputs`: arbitrary query strings, `Authorization` headers and glob patterns
//! (`auth::token_from_request`, `auth::glob_match`).
//! The properties checked are `checks::check_auth_inputs` in `fuzz/checks.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check_auth_inputs(data));
