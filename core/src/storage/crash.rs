//! A test hook: the process kills itself with `SIGKILL` in the middle of a
//! chosen storage call, so tests can land a real `kill -9` mid-frame,
//! mid-trailer, mid-`_SUCCESS` or mid-rename of a `conduit` process.
//!
//! Armed by the environment variable [`ENV`] (`CONDUIT_CRASH_AT`), whose value
//! is a [`CrashPoint`]: `<op>:<n>[:<path substring>]`, e.g. `write:3:data/clicks/`
//! (the third write to a `data/clicks/` file is torn: half its bytes reach the
//! file and are synced, then the process dies), `close:1:data/` (the process dies
//! before the first close of a data file), `rename:2:_SUCCESS`, `create:1:_tmp.`.
//! The count is per process, over every root it opens ([`crate::open_root`]
//! wraps each one when the variable is set, and the collector its spool
//! directory: the spool holds the same `data/...` paths as the root, so a
//! substring matches calls to either). An armed process logs a WARN
//! naming the point at the first root it opens. Unset (the normal case), nothing
//! is wrapped. Not a flag: nobody runs this in production.

use std::sync::{Arc, OnceLock};

use super::fault::{CrashPoint, FaultPlan, FaultStorage, Op};
use super::{SharedStorage, StorageError, StorageResult};

/// The environment variable holding the crash point.
pub const ENV: &str = "CONDUIT_CRASH_AT";

/// The process-wide plan, shared by every root so the count is per process.
static PLAN: OnceLock<Result<Option<FaultPlan>, String>> = OnceLock::new();

fn plan() -> &'static Result<Option<FaultPlan>, String> {
    PLAN.get_or_init(|| {
        let Ok(spec) = std::env::var(ENV) else {
            return Ok(None);
        };
        let point: CrashPoint = spec.parse().map_err(|e| format!("{ENV}: {e}"))?;
        tracing::warn!(
            crash_point = %point,
            "{ENV} is set: this process kills itself (SIGKILL) at that storage call; a test hook, never for production"
        );
        let plan = FaultPlan::new();
        plan.crash_at(point, Some(Arc::new(kill_self)));
        Ok(Some(plan))
    })
}

fn kill_self(op: Op, path: &str) {
    // Say where, on stderr directly (a tracing subscriber may buffer).
    eprintln!(
        "{ENV}: killing this process (SIGKILL) at {} of {path}",
        op.name()
    );
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    // SIGKILL cannot be caught; should it not be delivered at once, never return.
    loop {
        std::thread::park();
    }
}

/// `storage` wrapped by the crash point of [`ENV`] if it is set; an error naming
/// the variable if its value does not parse.
pub fn wrap_from_env(storage: SharedStorage) -> StorageResult<SharedStorage> {
    match plan() {
        Ok(None) => Ok(storage),
        Ok(Some(plan)) => Ok(Arc::new(FaultStorage::new(storage, plan.clone()))),
        Err(reason) => Err(StorageError::InvalidRoot {
            uri: storage.root().to_string(),
            reason: reason.clone(),
        }),
    }
}
