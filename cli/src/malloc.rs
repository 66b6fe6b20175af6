//! Bounding glibc's memory retention in the long-running worker.
//!
//! The worker copies minute files in 4 MiB chunks from several tokio threads. With
//! glibc's defaults a freed 4 MiB buffer raises the mmap threshold (up to 32 MiB),
//! so later buffers come from per-thread arenas that keep the freed space: a 30-min
//! soak showed the worker's RSS stepping up by 8–25 MiB per minute boundary to
//! ~150 MiB, while the same binary with mimalloc went up and down between 30 and
//! 60 MiB (docs/benchmarks.md, "Allocator experiment"). A global allocator would
//! change the collector too (it was slower under mimalloc), so only the worker gets
//! fixed glibc tunables: a fixed mmap threshold (large buffers always go back to the
//! kernel on free) and two arenas.
//!
//! glibc reads `GLIBC_TUNABLES` once, at process start, so the worker re-executes
//! itself (same pid, same arguments) with the variable set before any thread
//! starts. A `GLIBC_TUNABLES` already in the environment is respected as is (the
//! operator's choice, and the guard against a second exec).

/// The tunables the worker runs with.
pub const WORKER_TUNABLES: &str = "glibc.malloc.mmap_threshold=262144:glibc.malloc.arena_max=2";

/// Re-executes this process with [`WORKER_TUNABLES`] unless `GLIBC_TUNABLES` is
/// already set. Returns only when no exec happened (variable set, not glibc, or
/// the exec failed: then the worker runs with glibc's defaults, which is correct,
/// only hungrier).
pub fn bound_worker_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", WORKER_TUNABLES)
            .exec();
        eprintln!("warning: cannot re-execute with GLIBC_TUNABLES={WORKER_TUNABLES}: {err}; running with glibc's default allocator settings");
    }
}
