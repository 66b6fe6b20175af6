//! The properties conduit's fuzz targets check, shared by the targets
//! (`fuzz_targets/*.rs`, one line each) and the seed generator (`examples/seeds.rs`).
//!
//! Every check takes the fuzzer's bytes, runs the code under test and asserts what
//! must hold for any input (a failed assertion is a finding, like a panic):
//!
//! - [`scribe`]: the Scribe request and reply decoders never panic; what conduit
//!   decodes, the `thrift` crate reference decodes to the same value; what decodes
//!   re-encodes (with conduit's encoder and with the reference's) to a message that
//!   decodes equal; decoding a payload holds at most a fixed multiple of its length.
//! - [`frame`]: `read_frame` over arbitrary chunked, pending and cancelled reads
//!   returns exactly the frames (or the error) a model parser finds, and never
//!   reserves buffer room from a length prefix alone.
//! - [`file`]: the data-file scanner and decoder on arbitrary bytes, and files
//!   written the way a collector writes them, torn at any byte and recovered on a
//!   real `LocalStorage`: what decodes is a prefix of what was written, recovery keeps
//!   exactly what decodes, and a closed file holds as many records as its trailer says.
//! - [`documents`]: the `_SUCCESS` manifest and the JSON records (checkpoints, dedup
//!   snapshot, `_audit`, `_invalid`, heartbeat, leases) parse, serialize and parse
//!   back to the same value and the same bytes.
//!
//! [`alloc`] counts what a decoder allocates; [`seeds`] writes the starting corpora from conduit's real encoders.

pub mod alloc;
pub mod documents;
pub mod file;
pub mod frame;
pub mod scribe;
pub mod seeds;
