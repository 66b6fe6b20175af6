//! Summaries of samples and the JSON result lines every scenario appends.
//!
//! - [`median_min_max`]: what the tables print over runs (the median of an even
//!   count is the mean of the middle two).
//! - [`nearest_rank`]: latency percentiles over single calls or events (the
//!   smallest value with at least `p` of the values at or below it).
//! - [`slope`]: least-squares slope, for memory and descriptor growth per hour.
//! - [`append_json_line`]: one line per run to a `--json FILE`, creating its
//!   directory (`bench/results/` by default).

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Median, min and max; `None` for no values.
pub fn median_min_max(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

/// The nearest-rank `p` percentile (`0 < p <= 1`) of values sorted ascending:
/// the value at rank `ceil(p * n)`; `None` for no values.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The least-squares slope of `y` over `x`; `None` for fewer than 2 points or
/// when every `x` is the same.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

/// Cores this process may run on (0 if unknown), recorded with every result.
pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

/// Appends one JSON line to `path`, creating its directory.
pub fn append_json_line(path: &Path, line: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median_min_max(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(median_min_max(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(median_min_max(&[]), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(nearest_rank(&v, 0.5), Some(500));
        assert_eq!(nearest_rank(&v, 0.99), Some(990));
        assert_eq!(nearest_rank(&v, 0.999), Some(999));
        assert_eq!(nearest_rank(&v, 1.0), Some(1000));
        assert_eq!(nearest_rank(&[7u32], 0.01), Some(7));
        assert_eq!(nearest_rank::<u32>(&[], 0.5), None);
    }

    #[test]
    fn slope_of_a_line_and_of_flat_data() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        assert_eq!(slope(&[(0.0, 7.0), (1.0, 7.0)]), Some(0.0));
        assert_eq!(slope(&[(0.0, 7.0)]), None);
        assert_eq!(slope(&[(1.0, 7.0), (1.0, 8.0)]), None);
    }

    #[test]
    fn json_lines_append_and_create_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results/x.jsonl");
        append_json_line(&path, &serde_json::json!({"run": 1})).unwrap();
        append_json_line(&path, &serde_json::json!({"run": 2})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"run\":1}\n{\"run\":2}\n"
        );
    }
}
