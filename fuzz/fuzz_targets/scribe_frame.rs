//! `cargo fuzz run scribe_frame`: see `conduit_fuzz::frame` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conduit_fuzz::frame::check(data));
