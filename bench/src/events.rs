//! A deterministic generator of realistic ad-serving events, for benchmarks.
//!
//! Each event is one compact JSON object of about 300 bytes, with the fields, key
//! order and value ranges of this Python reference (so numbers measured with it are
//! comparable to runs of that script):
//!
//! ```text
//! d = {"ts": t0 + i*3 + randint(0,50), "type": choice(types), "req_id": 32 hex chars,
//!      "ip": "%d.%d.%d.%d" (1-223, 0-255, 0-255, 1-254), "country": choice(countries),
//!      "app": "com.game.%d" (0-499), "ua": choice(uas), "ad_id": randint(1,2_000_000),
//!      "bid": round(random()*5, 4), "slot": randint(1,30),
//!      "url": "/v2/ad/serve?pid=%d&plc=%s&sdk=%d.%d.%d"
//!             % (randint(1,99999), 12 hex chars, randint(8,11), randint(0,9), randint(0,30)),
//!      "seg": sample(range(1,400), randint(0,6))}
//! json.dumps(d, separators=(",", ":"))
//! ```
//!
//! The same seed always yields the same events (the RNG is [`StdRng`], seeded with
//! [`SeedableRng::seed_from_u64`]), so `conduit-bench ingest` and the peers it is
//! compared with (through `conduit-bench gen`) get identical input.

use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Event types.
pub const TYPES: [&str; 6] = [
    "impression",
    "click",
    "download",
    "conversion",
    "beacon",
    "render",
];

/// Country codes.
pub const COUNTRIES: [&str; 12] = [
    "IN", "US", "GB", "DE", "BR", "ID", "JP", "CN", "FR", "NG", "KE", "MX",
];

/// User agents.
pub const USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (Linux; Android 13; SM-S911B)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X)",
    "Dalvik/2.1.0 (Linux; U; Android 12; Redmi Note 11)",
    "okhttp/4.11.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
];

/// Number of distinct apps (`com.game.0` .. `com.game.499`).
pub const APPS: u32 = 500;

/// Timestamp of the first event, in milliseconds since the Unix epoch
/// (2023-11-14T22:13:20Z).
pub const T0_MS: i64 = 1_700_000_000_000;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Generates events; see the module documentation.
#[derive(Debug, Clone)]
pub struct EventGenerator {
    rng: StdRng,
    index: i64,
}

impl EventGenerator {
    /// A generator whose events depend only on `seed`.
    pub fn new(seed: u64) -> Self {
        EventGenerator {
            rng: StdRng::seed_from_u64(seed),
            index: 0,
        }
    }

    /// Number of events generated so far.
    pub fn generated(&self) -> u64 {
        self.index as u64
    }

    /// Appends the next event (compact JSON, no trailing newline) to `out`.
    pub fn next_into(&mut self, out: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let ts = T0_MS + self.index * 3 + rng.random_range(0..=50i64);
        self.index += 1;
        let kind = TYPES[rng.random_range(0..TYPES.len())];
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{{\"ts\":{ts},\"type\":\"{kind}\",\"req_id\":\"");
        push_hex(rng, 32, out);
        let _ = write!(
            out,
            "\",\"ip\":\"{}.{}.{}.{}\"",
            rng.random_range(1..=223u32),
            rng.random_range(0..=255u32),
            rng.random_range(0..=255u32),
            rng.random_range(1..=254u32),
        );
        let country = COUNTRIES[rng.random_range(0..COUNTRIES.len())];
        let app = rng.random_range(0..APPS);
        let ua = USER_AGENTS[rng.random_range(0..USER_AGENTS.len())];
        let ad_id = rng.random_range(1..=2_000_000u32);
        // round(random()*5, 4): at most 4 decimals, printed like Python's repr.
        let bid_units = (rng.random::<f64>() * 5.0 * 10_000.0).round() as u32;
        let slot = rng.random_range(1..=30u32);
        let _ = write!(
            out,
            ",\"country\":\"{country}\",\"app\":\"com.game.{app}\",\"ua\":\"{ua}\",\"ad_id\":{ad_id},\"bid\":"
        );
        push_decimal4(bid_units, out);
        let _ = write!(
            out,
            ",\"slot\":{slot},\"url\":\"/v2/ad/serve?pid={}&plc=",
            rng.random_range(1..=99_999u32)
        );
        push_hex(rng, 12, out);
        let _ = write!(
            out,
            "&sdk={}.{}.{}\",\"seg\":[",
            rng.random_range(8..=11u32),
            rng.random_range(0..=9u32),
            rng.random_range(0..=30u32),
        );
        // sample(range(1, 400), k): k distinct values in random order.
        let k = rng.random_range(0..=6usize);
        let mut seg = [0u32; 6];
        let mut n = 0;
        while n < k {
            let v = rng.random_range(1..400u32);
            if !seg[..n].contains(&v) {
                seg[n] = v;
                n += 1;
            }
        }
        for (i, v) in seg[..k].iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(out, "{v}");
        }
        out.extend_from_slice(b"]}");
    }

    /// The next event as a new vector.
    pub fn next_event(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(320);
        self.next_into(&mut out);
        out
    }
}

fn push_hex(rng: &mut StdRng, n: usize, out: &mut Vec<u8>) {
    let mut left = n;
    while left > 0 {
        let mut word: u64 = rng.random();
        for _ in 0..left.min(16) {
            out.push(HEX[(word & 0xf) as usize]);
            word >>= 4;
        }
        left = left.saturating_sub(16);
    }
}

/// Writes `units / 10000` the way Python's `repr(float)` writes a float rounded to
/// 4 decimals: `3.1416`, `2.5`, `0.0`, `5.0`.
fn push_decimal4(units: u32, out: &mut Vec<u8>) {
    let whole = units / 10_000;
    let frac = units % 10_000;
    let _ = write!(out, "{whole}.");
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let digits = format!("{frac:04}");
    out.extend_from_slice(digits.trim_end_matches('0').as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_of_the_expected_size_and_shape() {
        let mut gen = EventGenerator::new(42);
        let n = 20_000;
        let mut total = 0usize;
        let mut buf = Vec::new();
        for i in 0..n {
            buf.clear();
            gen.next_into(&mut buf);
            total += buf.len();
            assert!(!buf.contains(&b'\n'));
            let v: serde_json::Value = serde_json::from_slice(&buf)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&buf)));
            let o = v.as_object().unwrap();
            let keys: Vec<&str> = o.keys().map(|k| k.as_str()).collect();
            let mut expected = vec![
                "ts", "type", "req_id", "ip", "country", "app", "ua", "ad_id", "bid", "slot",
                "url", "seg",
            ];
            expected.sort_unstable();
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, expected);
            let ts = o["ts"].as_i64().unwrap();
            assert!((T0_MS + i * 3..=T0_MS + i * 3 + 50).contains(&ts));
            assert!(TYPES.contains(&o["type"].as_str().unwrap()));
            let req = o["req_id"].as_str().unwrap();
            assert_eq!(req.len(), 32);
            assert!(req.bytes().all(|b| b.is_ascii_hexdigit()));
            let ip: Vec<u32> = o["ip"]
                .as_str()
                .unwrap()
                .split('.')
                .map(|p| p.parse().unwrap())
                .collect();
            assert_eq!(ip.len(), 4);
            assert!((1..=223).contains(&ip[0]) && ip[1] <= 255 && ip[2] <= 255);
            assert!((1..=254).contains(&ip[3]));
            assert!(COUNTRIES.contains(&o["country"].as_str().unwrap()));
            let app: u32 = o["app"].as_str().unwrap()["com.game.".len()..]
                .parse()
                .unwrap();
            assert!(app < APPS);
            assert!(USER_AGENTS.contains(&o["ua"].as_str().unwrap()));
            assert!((1..=2_000_000).contains(&o["ad_id"].as_u64().unwrap()));
            let bid = o["bid"].as_f64().unwrap();
            assert!((0.0..=5.0).contains(&bid));
            assert!((1..=30).contains(&o["slot"].as_u64().unwrap()));
            assert!(o["url"].as_str().unwrap().starts_with("/v2/ad/serve?pid="));
            let seg = o["seg"].as_array().unwrap();
            assert!(seg.len() <= 6);
            let mut seen: Vec<u64> = seg.iter().map(|s| s.as_u64().unwrap()).collect();
            assert!(seen.iter().all(|s| (1..400).contains(s)));
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), seg.len(), "seg values are distinct");
            // Key order as in the Python reference.
            let text = std::str::from_utf8(&buf).unwrap();
            let positions: Vec<usize> = [
                "\"ts\"",
                "\"type\"",
                "\"req_id\"",
                "\"ip\"",
                "\"country\"",
                "\"app\"",
                "\"ua\"",
                "\"ad_id\"",
                "\"bid\"",
                "\"slot\"",
                "\"url\"",
                "\"seg\"",
            ]
            .iter()
            .map(|k| text.find(k).unwrap())
            .collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        }
        let mean = total as f64 / n as f64;
        assert!((280.0..=330.0).contains(&mean), "mean size {mean}");
    }

    #[test]
    fn same_seed_same_events() {
        let mut a = EventGenerator::new(7);
        let mut b = EventGenerator::new(7);
        let mut c = EventGenerator::new(8);
        let (ea, eb, ec) = (a.next_event(), b.next_event(), c.next_event());
        assert_eq!(ea, eb);
        assert_ne!(ea, ec);
        assert_eq!(a.generated(), 1);
    }

    #[test]
    fn decimals_print_like_python() {
        let f = |u| {
            let mut v = Vec::new();
            push_decimal4(u, &mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(f(0), "0.0");
        assert_eq!(f(50_000), "5.0");
        assert_eq!(f(31_416), "3.1416");
        assert_eq!(f(25_000), "2.5");
        assert_eq!(f(1), "0.0001");
        assert_eq!(f(10_010), "1.001");
    }
}
