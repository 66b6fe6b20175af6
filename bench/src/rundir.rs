//! Where a run keeps its data: a fresh directory under the temporary directory
//! (`$TMPDIR`), and for HDFS runs a fresh directory under an HDFS root, deleted
//! after a successful run (kept, with its path printed, after a failed one).

use std::path::PathBuf;

/// `$TMPDIR/<name>`, emptied if it exists, created.
pub fn fresh_temp_dir(name: &str) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The HDFS root of a scenario's `--hdfs` flag: the flag, else
/// `$CONDUIT_TEST_HDFS`, else `hdfs://127.0.0.1:9000`.
pub fn hdfs_base_or_default(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("CONDUIT_TEST_HDFS").ok())
        .unwrap_or_else(|| "hdfs://127.0.0.1:9000".to_owned())
}

/// Deletes a run's directory `sub` under the root `base` (warnings only: the
/// run's result stands).
pub async fn remove_storage_dir(base: &str, sub: &str) {
    match conduit_core::open_root(base).await {
        Ok(s) => {
            if let Err(e) = s.delete(sub, true).await {
                eprintln!("warning: cannot delete {base}/{sub}: {e}");
            }
        }
        Err(e) => eprintln!("warning: cannot open {base} to delete {sub}: {e}"),
    }
}
