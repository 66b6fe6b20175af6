//! A small tmpfs mounted for one test: a disk that can be filled to the last
//! byte and freed again, for the full-disk faults of collectors and workers.
//! Mounting needs root (CI runs as root); without it [`Tmpfs::mount`] goes
//! through [`crate::gate::missing`]: a `SKIPPED` line here, a failure under CI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted (lazily) when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `bytes` of tmpfs on a fresh temporary directory, or `None` (after
    /// [`crate::gate::missing`] named `test`) when this user may not mount.
    pub fn mount(test: &str, bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            crate::gate::missing(
                test,
                "cannot mount a tmpfs (not root?), so there is no disk to fill",
                "run the tests as root, as .ci/run does",
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Fills the disk with a `filler` file until a write fails with ENOSPC.
    pub fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let block = vec![0u8; 64 << 10];
        let mut small = false;
        loop {
            let chunk = if small { &block[..4096] } else { &block[..] };
            if let Err(e) = f.write_all(chunk) {
                assert_eq!(e.raw_os_error(), Some(28), "filling the tmpfs: {e}");
                if small {
                    break;
                }
                small = true; // the last few pages
            }
        }
        let _ = f.sync_all();
    }

    /// Deletes the filler: the disk has room again.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
