//! The state of every cell `conduit_merger::audit` gives the status page and
//! `conduit audit --only-problems`, on a storage laid out as collectors and a
//! stuck worker leave it: sealing stopped ten minutes ago at a minute whose file
//! is still in `data/` (minutes are sealed in order), so that minute and the
//! following ones are late once they ended `LATE_AFTER_SECS` ago and waiting
//! before; a sealed manifest listing fewer or more records than its file holds is
//! loss or duplicates; a file set aside in `quarantine/` marks its minute
//! quarantined; `_invalid` entries of the topic mark theirs invalid. The summary
//! counts minutes by those states.

use bytes::Bytes;
use conduit_core::layout::Layout;
use conduit_core::manifest::crc32c;
use conduit_core::records::{Base64Bytes, InvalidRecord};
use conduit_core::{Config, Manifest, ManifestFile, Minute, SharedStorage, Topic, View};
use conduit_merger::audit::{
    audit_topic, audit_topics, AuditRange, CellState, Summary, LATE_AFTER_SECS,
};
use conduit_testkit::minutes::data_file;
use conduit_testkit::{local_storage, node};

fn records(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("{{\"{tag}\":{i}}}")).collect()
}

/// A collector file of `topic` still in `data/`, holding `n` records.
async fn collector_file(storage: &SharedStorage, topic: &Topic, m: Minute, lines: &[String]) {
    let path = format!(
        "{}/{}",
        Layout::collector_dir(topic, &node("c1")),
        Layout::collector_file_name(topic, m, 0)
    );
    let bytes = data_file(lines, 1);
    storage
        .write_atomic(&path, Bytes::from(bytes))
        .await
        .unwrap();
}

/// A sealed local minute holding one moved collector file of `n` records (none
/// when 0), whose manifest says it holds `listed`.
async fn sealed_local(storage: &SharedStorage, topic: &Topic, m: Minute, n: usize, listed: u64) {
    let dir = Manifest::dir(View::Local, topic, m);
    let mut entries = Vec::new();
    if n > 0 {
        let name = Layout::local_file_name(&node("dc1"), &node("c1"), m, 0, topic);
        let bytes = data_file(&records(n, "sealed"), 1);
        entries.push(ManifestFile {
            name: name.clone(),
            bytes: bytes.len() as u64,
            records: listed,
            crc32c: crc32c(&bytes),
            cluster: node("dc1"),
            collector: Some(node("c1")),
            minute: m,
            late: false,
        });
        storage
            .write_atomic(&format!("{dir}/{name}"), Bytes::from(bytes))
            .await
            .unwrap();
    } else {
        storage.mkdirs(&dir).await.unwrap();
    }
    let manifest = Manifest::new(
        View::Local,
        topic.clone(),
        m,
        vec![node("dc1")],
        vec![],
        m.end(),
        "dc1/test".into(),
        entries,
    );
    manifest.seal(storage.as_ref()).await.unwrap();
}

#[tokio::test]
async fn cells_are_late_waiting_lost_duplicated_quarantined_or_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let topic = Topic::new("clicks").unwrap();
    let now = chrono::Utc::now();
    let to = Minute::from_datetime(now).unwrap();
    let at = |back: i64| to.add_minutes(-back).unwrap();
    let (late, lost, duplicated, quarantined, invalid) = (at(10), at(12), at(13), at(15), at(5));

    // The stream starts at `duplicated`, sealed with a manifest listing more
    // records than its file holds; `lost`, fewer; the next minute is sealed
    // empty; `late` was collected but never sealed, nor anything after it.
    sealed_local(&storage, &topic, duplicated, 2, 3).await;
    sealed_local(&storage, &topic, lost, 2, 1).await;
    sealed_local(&storage, &topic, at(11), 0, 0).await;
    collector_file(&storage, &topic, late, &records(5, "late")).await;
    collector_file(&storage, &topic, to, &records(3, "now")).await;
    // A collector file of the topic set aside by its collector's recovery.
    let original = format!(
        "{}/{}",
        Layout::collector_dir(&topic, &node("c1")),
        Layout::collector_file_name(&topic, quarantined, 7)
    );
    storage
        .write_atomic(
            &Layout::quarantine_path(&original),
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    // Two entries of the topic sent to `_invalid`, and one of another topic.
    let entry = |topic: &str| {
        let record = InvalidRecord {
            arrived_at: now,
            cluster: node("dc1"),
            collector: node("c1"),
            detail: "a newline in a lines payload".into(),
            payload_base64: Base64Bytes(Bytes::from_static(b"a\nb")),
            reason: "newline_in_lines_payload".into(),
            topic: topic.into(),
        };
        String::from_utf8(record.to_line())
            .unwrap()
            .trim_end()
            .to_owned()
    };
    collector_file(
        &storage,
        &Topic::invalid(),
        invalid,
        &[entry("clicks"), entry("clicks"), entry("views")],
    )
    .await;

    let range = AuditRange {
        from: at(20),
        to,
        now,
        settle_secs: 180,
        late_secs: LATE_AFTER_SECS,
    };
    let settings = Config::default().topic(&topic);
    let audit = audit_topic(
        &[("dc1".into(), storage.clone())],
        &settings,
        &topic,
        range.clone(),
    )
    .await
    .unwrap();
    assert_eq!(audit.rows.len(), 21);
    let cell = |m: Minute, tier: &str| {
        let row = audit.rows.iter().find(|r| r.minute == m).unwrap();
        let cell = row.cells.iter().find(|c| c.tier == tier).unwrap();
        (cell.count, cell.state)
    };
    let flags = |m: Minute| {
        audit
            .rows
            .iter()
            .find(|r| r.minute == m)
            .unwrap()
            .flags
            .clone()
    };

    assert_eq!(cell(late, "collected:dc1"), (5, CellState::Late));
    assert_eq!(cell(late, "local:dc1"), (0, CellState::Late));
    assert_eq!(flags(late), ["unsealed local:dc1"]);
    // Late: unsealed `LATE_AFTER_SECS` (5 min) after the minute ended. The sixth
    // minute before this one ended 5 minutes ago or more, the fifth less.
    assert_eq!(cell(at(6), "local:dc1"), (0, CellState::Late));
    assert_eq!(cell(at(5), "local:dc1"), (0, CellState::Waiting));
    assert_eq!(cell(at(11), "local:dc1"), (0, CellState::Sealed));
    assert_eq!(cell(to, "local:dc1"), (0, CellState::Waiting));
    assert_eq!(cell(to, "collected:dc1"), (3, CellState::Waiting));
    assert_eq!(cell(lost, "local:dc1"), (1, CellState::Loss));
    assert_eq!(cell(lost, "collected:dc1"), (2, CellState::Sealed));
    assert_eq!(flags(lost), ["LOSS local:dc1 1<2"]);
    assert_eq!(cell(duplicated, "local:dc1"), (3, CellState::Duplicates));
    assert_eq!(flags(duplicated), ["DUP local:dc1 3>2"]);
    assert_eq!(
        cell(quarantined, "collected:dc1"),
        (0, CellState::Quarantined)
    );
    assert_eq!(cell(invalid, "invalid"), (2, CellState::Invalid));
    assert_eq!(cell(invalid, "local:dc1"), (0, CellState::Waiting));
    // Before the stream started: nothing to seal.
    assert_eq!(cell(quarantined, "local:dc1"), (0, CellState::Sealed));
    let tiers: Vec<&str> = audit.rows[0]
        .cells
        .iter()
        .map(|c| c.tier.as_str())
        .collect();
    assert_eq!(tiers, ["acked", "collected:dc1", "local:dc1", "invalid"]);

    // --only-problems: the quarantined, duplicated, lost and late minutes, and
    // the one with `_invalid` entries; not the waiting ones.
    let problems: Vec<Minute> = audit
        .rows
        .iter()
        .filter(|r| r.has_problem())
        .map(|r| r.minute)
        .collect();
    assert_eq!(
        problems,
        [
            quarantined,
            duplicated,
            lost,
            late,
            at(9),
            at(8),
            at(7),
            at(6),
            invalid
        ]
    );
    assert_eq!(
        audit.summary(),
        Summary {
            topic: "clicks".into(),
            minutes: 21,
            sealed: 10,
            waiting: 6,
            late: 5,
            lost: 1,
            duplicated: 1,
            quarantined: 1,
            invalid: 1,
        }
    );
    assert_eq!(
        audit.summary().to_string(),
        "clicks: 21 minutes, 10 sealed, 6 waiting, 5 late, 1 lost, 1 duplicated, 1 quarantined, 1 invalid"
    );
    // A loss, a duplicate and a quarantined file.
    assert_eq!(audit.problems, 3);

    // Several topics at once (the status page) read `_audit`, `_invalid` and
    // `quarantine/` once and find what one audit per topic finds.
    let views = Topic::new("views").unwrap();
    let both = [
        (topic.clone(), settings.clone()),
        (views.clone(), Config::default().topic(&views)),
    ];
    let clusters = [("dc1".to_owned(), storage.clone())];
    let audits = audit_topics(&clusters, &both, range.clone()).await.unwrap();
    assert_eq!(audits.len(), 2);
    for (together, (topic, settings)) in audits.iter().zip(&both) {
        let alone = audit_topic(&clusters, settings, topic, range.clone())
            .await
            .unwrap();
        assert_eq!(together.topic, *topic);
        assert_eq!(together.summary(), alone.summary());
        assert_eq!(together.problems, alone.problems);
        assert_eq!(together.invalid.counts, alone.invalid.counts);
        assert_eq!(together.acked.counts, alone.acked.counts);
        for (a, b) in together.rows.iter().zip(&alone.rows) {
            assert_eq!(
                (a.minute, &a.flags, &a.cells),
                (b.minute, &b.flags, &b.cells)
            );
        }
    }
    assert_eq!(audits[1].invalid.counts[&invalid], 1, "the views entry");
}
