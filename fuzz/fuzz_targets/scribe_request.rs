//! `cargo fuzz run scribe_request`: see `conduit_fuzz::scribe` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conduit_fuzz::scribe::check_payload(data));
