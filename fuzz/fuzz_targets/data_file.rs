//! `cargo fuzz run data_file`: see `conduit_fuzz::file` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conduit_fuzz::file::check_bytes(data));
