//! `cargo fuzz run data_file_writer`: see `conduit_fuzz::file` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conduit_fuzz::file::check_written(data));
