//! Writes the seed corpora (`corpus/<target>/seed-*`) from conduit's encoders:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (see README.md).

use std::path::Path;

fn main() -> std::io::Result<()> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let records_tests = std::fs::read_to_string(fuzz.join("../core/src/records/tests.rs"))?;
    let bytes = conduit_fuzz::seeds::write_all(&fuzz.join("corpus"), &records_tests)?;
    println!(
        "wrote {bytes} bytes of seeds under {}",
        fuzz.join("corpus").display()
    );
    Ok(())
}
