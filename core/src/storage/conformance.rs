//! The storage conformance suite: one set of checks every backend must pass.
//!
//! Each check takes a storage and a scratch directory (relative path) of its own and
//! panics with a message naming the backend and what differed. `core/tests/
//! conformance.rs` runs every check against local disk always, and against HDFS when
//! `CONDUIT_TEST_HDFS` is set; other backends (wrappers included) call [`CHECKS`] the
//! same way.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{CreateMode, RenameMode, SharedStorage, Storage};
use crate::format::{decode_file, recover_file, Encoding, FrameEncoder, Trailer};

/// A named check.
pub type Check = (
    &'static str,
    fn(SharedStorage, String) -> BoxFuture<'static, ()>,
);

/// Every check of the suite, by name.
pub const CHECKS: &[Check] = &[
    ("write_sync_read", |s, d| Box::pin(write_sync_read(s, d))),
    ("exclusive_create", |s, d| Box::pin(exclusive_create(s, d))),
    ("exclusive_create_race", |s, d| {
        Box::pin(exclusive_create_race(s, d))
    }),
    ("concurrent_writers", |s, d| {
        Box::pin(concurrent_writers(s, d))
    }),
    ("rename_modes", |s, d| Box::pin(rename_modes(s, d))),
    ("list_and_stat", |s, d| Box::pin(list_and_stat(s, d))),
    ("mkdirs_and_delete", |s, d| {
        Box::pin(mkdirs_and_delete(s, d))
    }),
    ("append", |s, d| Box::pin(append(s, d))),
    ("large_file", |s, d| Box::pin(large_file(s, d))),
    ("write_atomic", |s, d| Box::pin(write_atomic(s, d))),
    ("torn_file", |s, d| Box::pin(torn_file(s, d))),
];

fn pattern(len: usize, seed: u8) -> Bytes {
    // Deterministic, not constant (so compression or dedup can't hide mistakes).
    let mut v = Vec::with_capacity(len);
    let mut x = seed as u32 ^ 0x9E37_79B9;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    Bytes::from(v)
}

async fn read_all(s: &dyn Storage, path: &str) -> Bytes {
    s.read(path)
        .await
        .unwrap_or_else(|e| panic!("[{}] read {path}: {e}", s.root()))
}

/// Create, write in pieces, sync (length visible), sync again (length at most
/// the synced one), read ranges, close (length exact), read all.
pub async fn write_sync_read(s: SharedStorage, dir: String) {
    let path = format!("{dir}/nested/deeper/file.bin");
    let mut w = s.create(&path, CreateMode::Exclusive).await.unwrap();
    w.write(Bytes::from_static(b"hello ")).await.unwrap();
    w.write(Bytes::from_static(b"world")).await.unwrap();
    assert_eq!(w.position(), 11);
    w.sync().await.unwrap();
    assert_eq!(
        s.len(&path).await.unwrap(),
        11,
        "[{}] synced length visible while open (on HDFS: the first sync of a block tells the NameNode)",
        s.root()
    );
    // A later sync of the same block reaches the DataNodes only (as Java's
    // `hsync()`), so on HDFS the listed length of an open file may stay behind
    // what is synced until the next block or the close; never ahead of it.
    w.write(Bytes::from_static(b"!")).await.unwrap();
    w.sync().await.unwrap();
    let open_len = s.len(&path).await.unwrap();
    assert!(
        (11..=12).contains(&open_len),
        "[{}] listed length {open_len} of an open file is between the first synced length (11) and the synced length (12)",
        s.root()
    );
    w.close().await.unwrap();
    assert_eq!(
        s.len(&path).await.unwrap(),
        12,
        "[{}] exact once closed",
        s.root()
    );
    assert_eq!(&read_all(&*s, &path).await[..], b"hello world!");
    assert_eq!(&s.read_range(&path, 6..11).await.unwrap()[..], b"world");
    assert_eq!(
        &s.read_range(&path, 6..100).await.unwrap()[..],
        b"world!",
        "a range past the end returns what exists"
    );
    assert!(s.read_range(&path, 20..30).await.unwrap().is_empty());
    assert!(s
        .read(&format!("{dir}/missing"))
        .await
        .unwrap_err()
        .is_not_found());
}

/// Exclusive create refuses an existing file; overwrite replaces it.
pub async fn exclusive_create(s: SharedStorage, dir: String) {
    let path = format!("{dir}/x");
    let mut w = s.create(&path, CreateMode::Exclusive).await.unwrap();
    w.write(Bytes::from_static(b"first")).await.unwrap();
    w.close().await.unwrap();
    let err = s.create(&path, CreateMode::Exclusive).await.unwrap_err();
    assert!(err.is_already_exists(), "[{}] got {err}", s.root());
    assert_eq!(
        &read_all(&*s, &path).await[..],
        b"first",
        "refused create changed nothing"
    );
    let mut w = s.create(&path, CreateMode::Overwrite).await.unwrap();
    w.write(Bytes::from_static(b"2nd")).await.unwrap();
    w.close().await.unwrap();
    assert_eq!(&read_all(&*s, &path).await[..], b"2nd");
}

/// Of many concurrent exclusive creates of one path, exactly one wins.
pub async fn exclusive_create_race(s: SharedStorage, dir: String) {
    let path = Arc::new(format!("{dir}/lock"));
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let s = s.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            match s.create(&path, CreateMode::Exclusive).await {
                Ok(mut w) => {
                    w.write(Bytes::from(vec![b'0' + i])).await.unwrap();
                    w.close().await.unwrap();
                    Some(i)
                }
                Err(e) if e.is_already_exists() => None,
                Err(e) => panic!("unexpected error racing exclusive create: {e}"),
            }
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(i) = t.await.unwrap() {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "[{}] winners: {winners:?}", s.root());
    assert_eq!(read_all(&*s, &path).await[..], [b'0' + winners[0]]);
}

/// Writers to different files interleave without mixing bytes.
pub async fn concurrent_writers(s: SharedStorage, dir: String) {
    let mut tasks = Vec::new();
    for i in 0..4u8 {
        let s = s.clone();
        let path = format!("{dir}/w{i}");
        tasks.push(tokio::spawn(async move {
            let mut w = s.create(&path, CreateMode::Exclusive).await.unwrap();
            let mut expected = Vec::new();
            for round in 0..20u8 {
                let chunk = pattern(
                    1000 + round as usize,
                    i.wrapping_mul(31).wrapping_add(round),
                );
                expected.extend_from_slice(&chunk);
                w.write(chunk).await.unwrap();
                if round % 5 == 4 {
                    w.sync().await.unwrap();
                }
                tokio::task::yield_now().await;
            }
            w.close().await.unwrap();
            (path, expected)
        }));
    }
    for t in tasks {
        let (path, expected) = t.await.unwrap();
        assert_eq!(
            read_all(&*s, &path).await[..],
            expected[..],
            "[{}] {path}",
            s.root()
        );
    }
}

async fn put(s: &dyn Storage, path: &str, content: &'static [u8]) {
    let mut w = s.create(path, CreateMode::Overwrite).await.unwrap();
    w.write(Bytes::from_static(content)).await.unwrap();
    w.close().await.unwrap();
}

/// Rename to a new name, onto an existing file with and without overwrite, a
/// missing source, and a directory.
pub async fn rename_modes(s: SharedStorage, dir: String) {
    let a = format!("{dir}/a");
    let b = format!("{dir}/sub/b");
    put(&*s, &a, b"A").await;
    s.rename(&a, &b, RenameMode::NoOverwrite).await.unwrap();
    assert!(!s.exists(&a).await.unwrap());
    assert_eq!(&read_all(&*s, &b).await[..], b"A");

    put(&*s, &a, b"A2").await;
    let err = s.rename(&a, &b, RenameMode::NoOverwrite).await.unwrap_err();
    assert!(err.is_already_exists(), "[{}] got {err}", s.root());
    assert_eq!(
        &read_all(&*s, &a).await[..],
        b"A2",
        "refused rename left the source"
    );
    assert_eq!(
        &read_all(&*s, &b).await[..],
        b"A",
        "refused rename left the target"
    );

    s.rename(&a, &b, RenameMode::Overwrite).await.unwrap();
    assert!(!s.exists(&a).await.unwrap());
    assert_eq!(&read_all(&*s, &b).await[..], b"A2");

    let err = s
        .rename(
            &format!("{dir}/nope"),
            &format!("{dir}/nope2"),
            RenameMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "[{}] got {err}", s.root());

    let moved = format!("{dir}/moved");
    s.rename(&format!("{dir}/sub"), &moved, RenameMode::NoOverwrite)
        .await
        .unwrap();
    assert_eq!(&read_all(&*s, &format!("{moved}/b")).await[..], b"A2");
}

/// Listing is sorted with sizes and kinds; stat and list of missing paths fail as
/// `NotFound`.
pub async fn list_and_stat(s: SharedStorage, dir: String) {
    put(&*s, &format!("{dir}/b.zst"), b"bb").await;
    put(&*s, &format!("{dir}/a.zst"), b"a").await;
    s.mkdirs(&format!("{dir}/c_dir")).await.unwrap();
    let entries = s.list(&dir).await.unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a.zst", "b.zst", "c_dir"], "[{}]", s.root());
    assert_eq!(entries[0].path, format!("{dir}/a.zst"));
    assert_eq!(entries[1].len, 2);
    assert!(!entries[1].is_dir);
    assert!(entries[2].is_dir);
    assert!(entries[0].modified_ms > 1_500_000_000_000, "mtime in ms");
    let st = s.stat(&format!("{dir}/b.zst")).await.unwrap();
    assert_eq!((st.len, st.is_dir, st.name.as_str()), (2, false, "b.zst"));
    assert!(s
        .stat(&format!("{dir}/zz"))
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .list(&format!("{dir}/zz"))
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .list_or_empty(&format!("{dir}/zz"))
        .await
        .unwrap()
        .is_empty());
}

/// mkdirs is idempotent; delete reports whether it removed something and needs
/// `recursive` for a non-empty directory.
pub async fn mkdirs_and_delete(s: SharedStorage, dir: String) {
    let d = format!("{dir}/x/y/z");
    s.mkdirs(&d).await.unwrap();
    s.mkdirs(&d).await.unwrap();
    assert!(s.stat(&d).await.unwrap().is_dir);
    let f = format!("{d}/f");
    put(&*s, &f, b"f").await;
    assert!(s.delete(&f, false).await.unwrap());
    assert!(
        !s.delete(&f, false).await.unwrap(),
        "deleting a missing file"
    );
    put(&*s, &f, b"f").await;
    let top = format!("{dir}/x");
    assert!(
        s.delete(&top, false).await.is_err(),
        "[{}] non-recursive delete of a non-empty dir must fail",
        s.root()
    );
    assert!(s.exists(&f).await.unwrap());
    assert!(s.delete(&top, true).await.unwrap());
    assert!(!s.exists(&top).await.unwrap());
}

/// Appending to a closed file continues it.
pub async fn append(s: SharedStorage, dir: String) {
    let path = format!("{dir}/log");
    put(&*s, &path, b"one,").await;
    let mut w = s.append(&path).await.unwrap();
    assert_eq!(w.position(), 4);
    w.write(Bytes::from_static(b"two")).await.unwrap();
    w.close().await.unwrap();
    assert_eq!(&read_all(&*s, &path).await[..], b"one,two");
    assert!(s.append(&format!("{dir}/missing")).await.is_err());
}

/// A file over 10 MiB, written in 1 MiB pieces with syncs, reads back whole and by
/// ranges across piece boundaries, also through `read_range_tracked`.
pub async fn large_file(s: SharedStorage, dir: String) {
    let path = format!("{dir}/big");
    let mut w = s.create(&path, CreateMode::Exclusive).await.unwrap();
    let mut expected = Vec::with_capacity(12 << 20);
    for i in 0..12u8 {
        let chunk = pattern(1 << 20, i);
        expected.extend_from_slice(&chunk);
        w.write(chunk).await.unwrap();
        if i % 4 == 3 {
            w.sync().await.unwrap();
        }
    }
    w.close().await.unwrap();
    assert_eq!(s.len(&path).await.unwrap(), 12 << 20);
    let all = read_all(&*s, &path).await;
    assert!(
        all[..] == expected[..],
        "[{}] 12 MiB file differs",
        s.root()
    );
    let mid = (5 << 20) - 17..(7 << 20) + 3;
    let part = s.read_range(&path, mid.clone()).await.unwrap();
    assert!(part[..] == expected[mid.start as usize..mid.end as usize]);
    // A tracked read (across a block boundary on HDFS with 8 MiB blocks) returns
    // the same bytes and reports every one of them.
    let progress = super::Progress::default();
    let wide = (3 << 20) + 5..(11 << 20) - 9;
    let tracked = s
        .read_range_tracked(&path, wide.clone(), &progress)
        .await
        .unwrap();
    assert!(tracked[..] == expected[wide.start as usize..wide.end as usize]);
    assert_eq!(progress.bytes(), wide.end - wide.start, "[{}]", s.root());
    assert!(progress.last_moved().is_some());
}

/// Atomic small-file writes replace content whole and leave no temp files.
pub async fn write_atomic(s: SharedStorage, dir: String) {
    let path = format!("{dir}/checkpoint.json");
    for i in 0..5 {
        let body = format!("{{\"version\":{i}}}");
        s.write_atomic(&path, Bytes::from(body.clone()))
            .await
            .unwrap();
        assert_eq!(read_all(&*s, &path).await[..], *body.as_bytes());
    }
    let names: Vec<String> = s
        .list(&dir)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        ["checkpoint.json"],
        "[{}] leftovers: {names:?}",
        s.root()
    );
}

/// A data file with a torn last frame: readers get every complete frame's records
/// and stop cleanly; recovery cuts the tail; a closed file decodes with its trailer.
pub async fn torn_file(s: SharedStorage, dir: String) {
    let path = format!("{dir}/t-2026-01-01-00-00_00000.zst");
    let mut enc = FrameEncoder::new(1).unwrap();
    let mut w = s.create(&path, CreateMode::Exclusive).await.unwrap();
    let mut expected = Vec::new();
    for f in 0..3 {
        let mut records = Vec::new();
        for r in 0..100 {
            let payload = format!("{{\"frame\":{f},\"record\":{r}}}");
            Encoding::Lines
                .encode_into(payload.as_bytes(), &mut records)
                .unwrap();
            expected.push(payload);
        }
        w.write(enc.frame(&records).unwrap()).await.unwrap();
        w.sync().await.unwrap();
    }
    let complete = w.position();
    let torn = enc.frame(b"never acknowledged\n").unwrap();
    w.write(torn.slice(..torn.len() / 2)).await.unwrap();
    w.close().await.unwrap();

    let buf = read_all(&*s, &path).await;
    let decoded = decode_file(&path, &buf, Encoding::Lines).unwrap();
    assert_eq!(decoded.payloads.len(), 300, "[{}]", s.root());
    assert!(decoded
        .payloads
        .iter()
        .zip(&expected)
        .all(|(a, b)| a == b.as_bytes()));
    assert_eq!(decoded.scan.valid_len, complete);
    assert!(decoded.scan.torn_bytes > 0);

    let recovery = recover_file(&*s, &path, Encoding::Lines, None)
        .await
        .unwrap();
    assert_eq!(recovery.kept_bytes, complete);
    assert_eq!(
        s.len(&path).await.unwrap(),
        complete,
        "[{}] torn tail cut",
        s.root()
    );

    let mut w = s.append(&path).await.unwrap();
    let trailer = Trailer {
        encoding: Encoding::Lines,
        records: 300,
        record_bytes: expected.iter().map(|p| p.len() as u64 + 1).sum(),
    };
    w.write(trailer.encode()).await.unwrap();
    w.close().await.unwrap();
    let decoded = decode_file(&path, &read_all(&*s, &path).await, Encoding::Lines).unwrap();
    assert!(decoded.scan.is_closed());
    assert_eq!(decoded.scan.trailer, Some(trailer));
    assert_eq!(decoded.payloads.len(), 300);
}
