//! Walking the `yyyy/MM/dd/HH/mm` minute directories of a view.
//!
//! [`minute_dirs_from`] finds the existing minute directories at or after a minute,
//! oldest first, listing one directory level at a time and skipping whole years,
//! months, days and hours before the start, so finding the oldest minute of a long
//! retention costs a handful of listings, not one per minute. Names that are not
//! zero-padded numbers of the level's width are ignored (`_tmp.` leftovers,
//! markers).

use conduit_core::layout::Layout;
use conduit_core::{Minute, Storage, StorageResult, Topic, View};

/// Widths of the directory levels below `<view>/<topic>`.
const WIDTHS: [usize; 5] = [4, 2, 2, 2, 2];

/// The existing minute directories of `topic` in `view` that are `>= from`, oldest
/// first, at most `limit` of them.
pub async fn minute_dirs_from(
    storage: &dyn Storage,
    view: View,
    topic: &Topic,
    from: Minute,
    limit: usize,
) -> StorageResult<Vec<Minute>> {
    let root = Layout::topic_dir(view, topic);
    let start = from.dir_path();
    let start: Vec<u32> = start.split('/').map(|f| f.parse().unwrap_or(0)).collect();
    let mut out = Vec::new();
    // Depth-first with an explicit stack: (path, level, fields so far, still bounded by `from`).
    let mut stack: Vec<(String, usize, Vec<u32>, bool)> = vec![(root, 0, Vec::new(), true)];
    while let Some((path, level, fields, bounded)) = stack.pop() {
        if out.len() >= limit {
            break;
        }
        if level == WIDTHS.len() {
            let text = fields
                .iter()
                .zip(WIDTHS)
                .map(|(v, w)| format!("{v:0w$}"))
                .collect::<Vec<_>>()
                .join("/");
            if let Ok(m) = Minute::parse_dir_path(&text) {
                out.push(m);
            }
            continue;
        }
        let mut children: Vec<u32> = storage
            .list_or_empty(&path)
            .await?
            .into_iter()
            .filter(|e| e.is_dir && e.name.len() == WIDTHS[level])
            .filter(|e| e.name.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|e| e.name.parse().ok())
            .filter(|v| !bounded || *v >= start[level])
            .collect();
        children.sort_unstable();
        // Push in reverse so the smallest is visited first.
        for v in children.into_iter().rev() {
            let width = WIDTHS[level];
            let mut next = fields.clone();
            next.push(v);
            stack.push((
                format!("{path}/{v:0width$}"),
                level + 1,
                next,
                bounded && v == start[level],
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use conduit_core::storage::LocalStorage;
    use conduit_core::SharedStorage;

    use super::*;

    #[tokio::test]
    async fn finds_dirs_in_order_from_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let s: SharedStorage = Arc::new(LocalStorage::open(dir.path()).unwrap());
        let topic = Topic::new("clicks").unwrap();
        let m = |t: &str| Minute::parse_flexible(t).unwrap();
        for t in [
            "2025-12-31T23:59",
            "2026-11-22T09:59",
            "2026-11-22T10:05",
            "2026-11-22T10:06",
            "2026-11-23T00:00",
        ] {
            s.mkdirs(&Layout::minute_dir(View::Merged, &topic, m(t)))
                .await
                .unwrap();
        }
        s.mkdirs("streams/clicks/2026/11/22/10/_tmp.x")
            .await
            .unwrap();
        let all = minute_dirs_from(&*s, View::Merged, &topic, Minute::MIN, 100)
            .await
            .unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[0], m("2025-12-31T23:59"));
        let from = minute_dirs_from(&*s, View::Merged, &topic, m("2026-11-22T10:00"), 2)
            .await
            .unwrap();
        assert_eq!(from, vec![m("2026-11-22T10:05"), m("2026-11-22T10:06")]);
        let none = minute_dirs_from(&*s, View::Local, &topic, Minute::MIN, 10)
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
