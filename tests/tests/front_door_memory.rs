//! The collector's memory against careless and hostile clients (issue 14, "the
//! front door"): a real `conduit collector` process, attacked over raw sockets
//! while a well-behaved client keeps publishing; each test asserts the RSS bound
//! (`VmHWM`, the peak, from `/proc/<pid>/status`), the well-behaved client's acks
//! and that every acknowledged event is stored.
//!
//! Each test prints its figures (`cargo test -p conduit-tests --test
//! front_door_memory -- --nocapture`); `docs/reliability.md` records them.

mod door;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use conduit_core::scribe::{
    decode_reply, encode_fb303_call, encode_log_call, read_frame, Fb303Call, ReplyValue, ResultCode,
};
use conduit_testkit::scribe::Client;
use door::{filler, rss_mib, runtime, sample, Scene, SteadyClient, STEADY_TOPIC};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Checks that every event the well-behaved client saw acknowledged is stored.
fn all_acked_stored(scene: &Scene, acked: &std::collections::BTreeSet<String>) {
    let stored: std::collections::BTreeSet<String> =
        scene.payloads(STEADY_TOPIC).into_iter().collect();
    let lost: Vec<&String> = acked.difference(&stored).take(5).collect();
    assert!(lost.is_empty(), "acknowledged and not stored: {lost:?}");
}

/// One connection sends 800 calls of about 1 MiB, each to a new category. The
/// connection's category cache used to keep each whole frame alive (the category
/// was a view of it): RSS grew by the frames, 10 → 814 MiB, until the connection
/// closed. Now the cache copies the name.
#[test]
fn new_categories_do_not_keep_frames_alive() {
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start("");
    let pid = collector.child.id();
    let addr = collector.thrift_addr.clone();
    let steady = SteadyClient::start(&rt, &addr, "steady");
    steady.progressed(5, Duration::from_secs(10));
    let (before, _) = rss_mib(pid);
    steady.reset();

    let message = filler(1_000_000);
    let client = rt.block_on(async {
        let mut client = Client::connect(&addr).await;
        for i in 0..800 {
            let code = client.log(&[(format!("cat_{i}"), &message)]).await;
            assert_eq!(code, ResultCode::Ok, "call {i}");
        }
        client
    });
    // The connection is still open: whatever it kept is still held.
    let (after, peak) = rss_mib(pid);
    drop(client);
    let seen = steady.stop(&rt);
    eprintln!(
        "800 x 1 MiB, new category each: RSS {before:.0} -> {after:.0} MiB (peak {peak:.0}); well-behaved: {}; {:?}",
        seen.summary(),
        t0.elapsed()
    );
    // 800 frames pinned would be +800 MiB; what grows legitimately is the 800 new
    // topics' open data files (an encoder and a buffer each).
    assert!(
        after < before + 300.0,
        "RSS {before:.0} -> {after:.0} MiB with the connection open"
    );
    assert_eq!(seen.try_later, 0);
    assert!(seen.max() < Duration::from_secs(5), "{}", seen.summary());
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    all_acked_stored(&scene, &seen.acked);
    assert_eq!(
        scene.payloads("cat_799"),
        vec![String::from_utf8(message).unwrap()]
    );
}

/// `getStatus` on a fresh connection: fb303 calls are tiny and always answered.
async fn get_status(addr: &str) -> i32 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    encode_fb303_call(1, &Fb303Call::GetStatus, &mut out);
    s.write_all(&out).await.unwrap();
    let frame = read_frame(&mut s, 1 << 20, &mut BytesMut::new())
        .await
        .unwrap()
        .expect("a reply");
    match decode_reply(frame).unwrap().value {
        ReplyValue::Status(status) => status,
        other => panic!("{other:?}"),
    }
}

/// Connections pipeline large calls (incompressible, each to a topic of its own,
/// so no topic queue bound applies) without waiting for answers. Nothing bounded
/// the total: 2 such connections grew RSS 400 MiB/s to 5.9 GiB with no TRY_LATER.
/// Now the memory budget answers TRY_LATER (reason `memory`) before it is
/// exceeded: here 4 connections offer 768 MB at once against a 128 MiB budget.
#[test]
fn pipelined_large_calls_get_try_later_before_memory_runs_out() {
    const BUDGET_MIB: u64 = 128;
    const CONNECTIONS: usize = 4;
    const CALLS: i32 = 6;
    const ENTRIES: usize = 32;
    const ENTRY_BYTES: usize = 1_000_000;
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start(&format!("max_inflight_bytes = {}", BUDGET_MIB << 20));
    let pid = collector.child.id();
    let addr = collector.thrift_addr.clone();
    let steady = SteadyClient::start(&rt, &addr, "steady");
    steady.progressed(5, Duration::from_secs(10));
    let (before, _) = rss_mib(pid);
    steady.reset();

    // Random bytes (no newline: a `lines` topic), each entry a window of them at
    // its own offset: more than zstd's level-1 window apart, so incompressible.
    let mut random = vec![0u8; 2 * ENTRY_BYTES];
    rand::rng().fill_bytes(&mut random);
    random
        .iter_mut()
        .filter(|b| **b == b'\n')
        .for_each(|b| *b = b'n');
    let random = std::sync::Arc::new(random);
    let attackers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (addr, random) = (addr.clone(), random.clone());
            rt.spawn(async move {
                let stream = TcpStream::connect(&addr).await.unwrap();
                let (mut reader, mut writer) = stream.into_split();
                let sender = tokio::spawn(async move {
                    for i in 0..CALLS {
                        let topic = format!("big_{c}_{i}");
                        let entries: Vec<(&[u8], &[u8])> = (0..ENTRIES)
                            .map(|e| {
                                let at =
                                    (c * 7919 + i as usize * 104_729 + e * 31_337) % ENTRY_BYTES;
                                (topic.as_bytes(), &random[at..at + ENTRY_BYTES])
                            })
                            .collect();
                        let mut out = Vec::new();
                        encode_log_call(i, &entries, &mut out);
                        writer.write_all(&out).await.unwrap();
                    }
                    writer
                });
                let mut buf = BytesMut::new();
                let (mut ok, mut later) = (0usize, 0usize);
                for _ in 0..CALLS {
                    let frame = read_frame(&mut reader, 1 << 20, &mut buf)
                        .await
                        .unwrap()
                        .expect("a reply to every call");
                    match decode_reply(frame).unwrap().value {
                        ReplyValue::ResultCode(ResultCode::Ok) => ok += 1,
                        ReplyValue::ResultCode(ResultCode::TryLater) => later += 1,
                        other => panic!("{other:?}"),
                    }
                }
                drop(sender.await.unwrap());
                (ok, later)
            })
        })
        .collect();
    // fb303 is answered while the attack runs.
    let status = rt.block_on(get_status(&addr));
    assert_eq!(status, 2, "getStatus answers ALIVE");
    let (mut ok, mut later) = (0, 0);
    for attacker in attackers {
        let (o, l) = rt.block_on(attacker).unwrap();
        ok += o;
        later += l;
    }
    let (after, peak) = rss_mib(pid);
    let refused = sample(
        &collector,
        r#"conduit_collector_try_later_total{reason="memory"}"#,
    );
    steady.progressed(5, Duration::from_secs(10));
    let seen = steady.stop(&rt);
    eprintln!(
        "{CONNECTIONS} connections x {CALLS} pipelined calls of {ENTRIES} MB, budget {BUDGET_MIB} MiB: {ok} OK, {later} TRY_LATER ({refused} for memory); RSS {before:.0} -> {after:.0} MiB, peak {peak:.0} MiB; well-behaved: {}; {:?}",
        seen.summary(),
        t0.elapsed()
    );
    assert!(later > 0, "some calls are refused");
    assert!(refused >= later as f64, "they are refused for memory");
    assert!(
        peak < before + BUDGET_MIB as f64 + 128.0,
        "peak RSS {peak:.0} MiB with a budget of {BUDGET_MIB} MiB"
    );
    assert!(seen.max() < Duration::from_secs(10), "{}", seen.summary());
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    all_acked_stored(&scene, &seen.acked);
    // Every call answered OK is stored whole; none refused is stored at all.
    let stored: usize = (0..CONNECTIONS)
        .flat_map(|c| (0..CALLS).map(move |i| format!("big_{c}_{i}")))
        .map(|topic| scene.raw_payloads(&topic).len())
        .sum();
    assert_eq!(stored, ok * ENTRIES, "{ok} calls of {ENTRIES} acknowledged");
}

/// 16 connections each send 63 MiB of a 64 MiB frame and stop; 16 more send only
/// a 64 MiB length prefix. This held 1 GiB with no timeout, and each prefix
/// reserved 64 MiB before a byte of it arrived. Now frames grow as bytes arrive,
/// frames still arriving may hold half of the budget (the rest is dropped as it
/// arrives), and `frame_timeout_ms` closes them; the well-behaved client is
/// served from the other half meanwhile.
#[test]
fn partial_frames_and_bare_prefixes_are_bounded_and_time_out() {
    const FRAME_TIMEOUT_MS: u64 = 5000;
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start(&format!("frame_timeout_ms = {FRAME_TIMEOUT_MS}"));
    let pid = collector.child.id();
    let addr = collector.thrift_addr.clone();
    let steady = SteadyClient::start(&rt, &addr, "steady");
    steady.progressed(5, Duration::from_secs(10));
    let (before, _) = rss_mib(pid);
    steady.reset();

    let prefix = (64u32 << 20).to_be_bytes();
    let body = std::sync::Arc::new(filler(63 << 20));
    let attack = Instant::now();
    let attackers: Vec<_> = (0..32)
        .map(|i| {
            let (addr, body) = (addr.clone(), body.clone());
            rt.spawn(async move {
                let mut s = TcpStream::connect(&addr).await.unwrap();
                s.write_all(&prefix).await.unwrap();
                if i % 2 == 0 {
                    s.write_all(&body).await.unwrap();
                }
                // Then nothing more: wait to be closed.
                let mut sink = [0u8; 64];
                let closed = tokio::time::timeout(Duration::from_secs(60), s.read(&mut sink)).await;
                assert!(
                    matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
                    "the collector closes the connection: {closed:?}"
                );
                Instant::now()
            })
        })
        .collect();
    let mut closed_at = Vec::new();
    for attacker in attackers {
        closed_at.push(rt.block_on(attacker).unwrap());
    }
    let (_, peak) = rss_mib(pid);
    let last_closed = closed_at.iter().max().unwrap().duration_since(attack);
    let timeouts = sample(
        &collector,
        r#"conduit_collector_connections_closed_total{reason="frame_timeout"}"#,
    );
    steady.progressed(5, Duration::from_secs(10));
    let seen = steady.stop(&rt);
    let (after, _) = rss_mib(pid);
    eprintln!(
        "16 x 63 MiB partial frames + 16 bare 64 MiB prefixes: RSS {before:.0} MiB, peak {peak:.0} MiB, {after:.0} MiB after; all closed after {last_closed:?} ({timeouts} frame_timeout); well-behaved: {}; {:?}",
        seen.summary(),
        t0.elapsed()
    );
    let half_budget = 256.0;
    assert!(
        peak < before + half_budget + 128.0,
        "peak RSS {peak:.0} MiB"
    );
    assert_eq!(timeouts, 32.0);
    assert!(last_closed >= Duration::from_millis(FRAME_TIMEOUT_MS));
    assert_eq!(seen.try_later, 0, "{}", seen.summary());
    assert!(seen.max() < Duration::from_secs(5), "{}", seen.summary());
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    all_acked_stored(&scene, &seen.acked);
    let topics: Vec<String> = std::fs::read_dir(std::path::Path::new(&scene.root()).join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        topics,
        vec![STEADY_TOPIC.to_owned()],
        "no frame of the attack is stored"
    );
}
