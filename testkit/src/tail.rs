//! Taking messages from a PinTail consumer in tests.

use std::time::Duration;

use conduit_pintail::{Consumer, Message};

/// The next `n` messages, each within `within`; panics (with the consumer's stats)
/// when one does not come.
pub async fn take(c: &mut Consumer, n: usize, within: Duration) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let next = c
            .next_timeout(within)
            .await
            .unwrap_or_else(|e| panic!("message {i} of {n}: {e}"));
        out.push(next.unwrap_or_else(|| {
            panic!(
                "message {i} of {n} did not come within {within:?}; stats {:?}",
                c.stats()
            )
        }));
    }
    out
}

/// Every message until none comes within `idle` (or the consumer finished).
pub async fn drain(c: &mut Consumer, idle: Duration) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(m) = c
        .next_timeout(idle)
        .await
        .unwrap_or_else(|e| panic!("after {} messages: {e}", out.len()))
    {
        out.push(m);
    }
    out
}

/// A message's payload as text.
pub fn text(m: &Message) -> String {
    String::from_utf8(m.payload.to_vec()).expect("a UTF-8 payload")
}

/// The payloads of `messages` as text.
pub fn texts(messages: &[Message]) -> Vec<String> {
    messages.iter().map(text).collect()
}
