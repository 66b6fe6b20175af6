//! `cargo fuzz run records`: see `conduit_fuzz::documents` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conduit_fuzz::documents::check_record(data));
