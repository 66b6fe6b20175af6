//! Scribe clients for tests: [`Client`], a raw connection speaking framed binary
//! `Log` and `LogBatch` with `conduit_core::scribe` (the collector's own codec,
//! client side) and reading each reply; and [`Thriftpy2`], a client nobody here
//! wrote (PyPI `thriftpy2`, framed or buffered (unframed) transport, binary
//! protocol) driven by a JSON plan.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use conduit_core::scribe::{
    decode_reply, encode_log_batch_call, encode_log_call, read_frame, ReplyValue, ResultCode,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// How long [`Client::log`] and [`Client::log_batch`] wait for a reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest reply frame accepted.
const MAX_REPLY_FRAME: usize = 1 << 20;

/// One Scribe connection; calls are sent one at a time, each waiting for its
/// reply, whose method name and sequence id are checked.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    /// The read buffer `read_frame` keeps between replies.
    buf: BytesMut,
    /// Sequence id of the last call.
    seqid: i32,
}

impl Client {
    /// Connects (panics when it cannot).
    pub async fn connect(addr: impl ToSocketAddrs + std::fmt::Debug) -> Client {
        let shown = format!("{addr:?}");
        Client::try_connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {shown}: {e}"))
    }

    /// Connects, or the error (a collector that is gone).
    pub async fn try_connect(addr: impl ToSocketAddrs) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: BytesMut::new(),
            seqid: 0,
        })
    }

    /// `Log` with `(category, message)` entries; the result code. Panics when no
    /// reply comes (the connection closed, or [`REPLY_TIMEOUT`] passed).
    pub async fn log<C: AsRef<[u8]>, M: AsRef<[u8]>>(&mut self, entries: &[(C, M)]) -> ResultCode {
        self.try_log(entries, REPLY_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no reply to Log (connection closed or reset, or none within {REPLY_TIMEOUT:?})"))
    }

    /// `Log` of `messages`, all to `topic`; the result code.
    pub async fn log_to<M: AsRef<[u8]>>(&mut self, topic: &str, messages: &[M]) -> ResultCode {
        let entries: Vec<(&[u8], &[u8])> = messages
            .iter()
            .map(|m| (topic.as_bytes(), m.as_ref()))
            .collect();
        self.log(&entries).await
    }

    /// `Log` of `messages` to `topic`, which must be acknowledged (asserts `OK`).
    pub async fn log_acked<M: AsRef<[u8]>>(&mut self, topic: &str, messages: &[M]) {
        let code = self.log_to(topic, messages).await;
        assert_eq!(
            code,
            ResultCode::Ok,
            "Log of {} messages to {topic}",
            messages.len()
        );
    }

    /// `Log`; `None` when no reply comes within `timeout` (the connection was
    /// closed or reset, or the collector is gone or stuck).
    pub async fn try_log<C: AsRef<[u8]>, M: AsRef<[u8]>>(
        &mut self,
        entries: &[(C, M)],
        timeout: Duration,
    ) -> Option<ResultCode> {
        self.seqid += 1;
        let mut out = Vec::new();
        encode_log_call(self.seqid, &refs(entries), &mut out);
        self.call("Log", &out, timeout).await
    }

    /// `LogBatch` (conduit's idempotent extension) with `(category, message)`
    /// entries; the result code. Panics when no reply comes within
    /// [`REPLY_TIMEOUT`].
    pub async fn log_batch<C: AsRef<[u8]>, M: AsRef<[u8]>>(
        &mut self,
        publisher: &str,
        sequence: i64,
        entries: &[(C, M)],
    ) -> ResultCode {
        self.try_log_batch(publisher, sequence, entries, REPLY_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no reply to LogBatch (connection closed or reset, or none within {REPLY_TIMEOUT:?})"))
    }

    /// `LogBatch`; `None` when no reply comes within `timeout` (the connection was
    /// closed or reset, or the collector is gone or stuck).
    pub async fn try_log_batch<C: AsRef<[u8]>, M: AsRef<[u8]>>(
        &mut self,
        publisher: &str,
        sequence: i64,
        entries: &[(C, M)],
        timeout: Duration,
    ) -> Option<ResultCode> {
        self.seqid += 1;
        let mut out = Vec::new();
        encode_log_batch_call(
            self.seqid,
            publisher.as_bytes(),
            sequence,
            &refs(entries),
            &mut out,
        );
        self.call("LogBatch", &out, timeout).await
    }

    /// `LogBatch` whose reply may be anything (an exception, for a refused
    /// sequence): the decoded reply value. Panics when no reply comes within
    /// [`REPLY_TIMEOUT`].
    pub async fn log_batch_reply<C: AsRef<[u8]>, M: AsRef<[u8]>>(
        &mut self,
        publisher: &str,
        sequence: i64,
        entries: &[(C, M)],
    ) -> ReplyValue {
        self.seqid += 1;
        let mut out = Vec::new();
        encode_log_batch_call(
            self.seqid,
            publisher.as_bytes(),
            sequence,
            &refs(entries),
            &mut out,
        );
        self.call_value("LogBatch", &out, REPLY_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no reply to LogBatch within {REPLY_TIMEOUT:?}"))
    }

    /// Sends one framed call and reads its reply; `None` when there is none.
    async fn call(&mut self, method: &str, frame: &[u8], timeout: Duration) -> Option<ResultCode> {
        match self.call_value(method, frame, timeout).await? {
            ReplyValue::ResultCode(code) => Some(code),
            other => panic!("unexpected reply to {method}: {other:?}"),
        }
    }

    /// Sends one framed call and reads its reply's value; `None` when there is
    /// none.
    async fn call_value(
        &mut self,
        method: &str,
        frame: &[u8],
        timeout: Duration,
    ) -> Option<ReplyValue> {
        self.stream.write_all(frame).await.ok()?;
        let reply = tokio::time::timeout(
            timeout,
            read_frame(&mut self.stream, MAX_REPLY_FRAME, &mut self.buf),
        )
        .await
        .ok()?
        .ok()??;
        let reply = decode_reply(reply).unwrap_or_else(|e| panic!("undecodable reply: {e}"));
        assert_eq!(reply.name, method, "the reply names the method called");
        assert_eq!(
            reply.seqid, self.seqid,
            "the reply carries the call's seqid"
        );
        Some(reply.value)
    }
}

fn refs<C: AsRef<[u8]>, M: AsRef<[u8]>>(entries: &[(C, M)]) -> Vec<(&[u8], &[u8])> {
    entries
        .iter()
        .map(|(c, m)| (c.as_ref(), m.as_ref()))
        .collect()
}

/// `n` numbered JSON payloads `{"tag":T,"n":i}` for `topic`, as `(topic, payload)`
/// entries.
pub fn events(topic: &'static str, tag: &str, n: usize) -> Vec<(&'static str, String)> {
    (0..n)
        .map(|i| (topic, format!("{{\"tag\":\"{tag}\",\"n\":{i}}}")))
        .collect()
}

/// `n` payloads `tag-i` for `i` in `from..from + n`.
pub fn numbered(tag: &str, from: usize, n: usize) -> Vec<String> {
    (from..from + n).map(|i| format!("{tag}-{i}")).collect()
}

/// `n` payloads `tag-i-<filler>`, each with `pad` bytes of poorly compressible
/// filler (so files reach a size limit).
pub fn padded(tag: &str, n: usize, pad: usize) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (tag.len() as u64);
    (0..n)
        .map(|i| {
            let filler: String = (0..pad)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            format!("{tag}-{i}-{filler}")
        })
        .collect()
}

/// Scribe's IDL with the fb303 methods declared directly on the service (no
/// `extends`, so no fb303.thrift include), plus `getOption`, which the collector
/// does not implement.
const SCRIBE_IDL: &str = r#"
enum ResultCode {
  OK = 0,
  TRY_LATER = 1
}

enum fb_status {
  DEAD = 0,
  STARTING = 1,
  ALIVE = 2,
  STOPPING = 3,
  STOPPED = 4,
  WARNING = 5
}

struct LogEntry {
  1: string category,
  2: string message
}

service scribe {
  ResultCode Log(1: list<LogEntry> messages);
  string getName();
  string getVersion();
  fb_status getStatus();
  string getStatusDetails();
  map<string, i64> getCounters();
  i64 getCounter(1: string key);
  i64 aliveSince();
  string getOption(1: string key);
}
"#;

/// Runs the steps of a JSON plan on ONE connection and prints one JSON line per step.
const DRIVER: &str = r#"
import base64, json, sys
import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

idl, plan_path = sys.argv[1], sys.argv[2]
scribe = thriftpy2.load(idl, module_name="scribe_thrift")
with open(plan_path) as f:
    plan = json.load(f)
# strict: versioned message headers (thriftpy2's default); otherwise the old,
# unversioned form that old Scribe clients write.
strict = plan.get("strict", True)
# framed (conduit's publisher, TFramedTransport) or buffered: unframed messages,
# the transport of Thrift's generated clients.
transports = {"framed": TFramedTransportFactory, "buffered": TBufferedTransportFactory}
# tls: {"cafile": ..., "certfile": ..., "keyfile": ...} makes thriftpy2 connect
# with its TSSLSocket (server certificate verified against cafile).
client = make_client(
    scribe.scribe, plan["host"], plan["port"],
    proto_factory=TBinaryProtocolFactory(strict_read=strict, strict_write=strict),
    trans_factory=transports[plan.get("transport", "framed")](),
    timeout=30000,
    **plan.get("tls", {}),
)

def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

for step in plan["steps"]:
    op = step["op"]
    if op == "log":
        entries = [
            scribe.LogEntry(category=category, message=base64.b64decode(message))
            for category, message in step["entries"]
        ]
        emit({"op": "log", "entries": len(entries), "code": client.Log(entries)})
    elif op == "fb303":
        emit({
            "op": "fb303",
            "name": client.getName(),
            "version": client.getVersion(),
            "status": client.getStatus(),
            "details": client.getStatusDetails(),
            "counters": client.getCounters(),
            "entries_counter": client.getCounter("entries"),
            "alive_since": client.aliveSince(),
        })
    elif op == "unknown":
        try:
            value = client.getOption("anything")
            emit({"op": "unknown", "returned": value})
        except TApplicationException as e:
            emit({"op": "unknown", "exception": type(e).__name__, "type": e.type, "message": e.message})
    else:
        raise SystemExit("unknown step " + op)
client.close()
"#;

/// The PyPI `thriftpy2` Scribe client, run by a Python driver that executes a
/// plan of steps on one connection and prints one JSON line per step:
/// - [`log_step`]: `{"op": "log", "entries": n, "code": <ResultCode>}`;
/// - `{"op": "fb303"}`: every fb303 call's answer (`name`, `version`, `status`,
///   `details`, `counters`, `entries_counter`, `alive_since`);
/// - `{"op": "unknown"}`: calls a method the collector does not implement and
///   reports the `TApplicationException` (`exception`, `type`, `message`).
///
/// Check [`crate::gate::python`]`(test, "thriftpy2")` first.
#[derive(Debug)]
pub struct Thriftpy2 {
    /// Holds the IDL, the driver and the plans.
    dir: tempfile::TempDir,
}

impl Default for Thriftpy2 {
    fn default() -> Self {
        Thriftpy2::new()
    }
}

impl Thriftpy2 {
    /// Writes the IDL and the driver into a temporary directory.
    pub fn new() -> Thriftpy2 {
        let dir = tempfile::tempdir().expect("temp dir for the thriftpy2 driver");
        std::fs::write(dir.path().join("scribe.thrift"), SCRIBE_IDL).expect("write the IDL");
        std::fs::write(dir.path().join("driver.py"), DRIVER).expect("write the driver");
        Thriftpy2 { dir }
    }

    /// Runs `steps` on one connection to `addr` (`host:port`) with versioned
    /// message headers; returns the driver's output lines. Panics when the driver
    /// fails.
    pub fn run(&self, addr: &str, steps: Vec<Value>) -> Vec<Value> {
        self.run_with(addr, true, steps)
    }

    /// [`Thriftpy2::run`] with strict (versioned) or old, unversioned message
    /// headers.
    pub fn run_with(&self, addr: &str, strict: bool, steps: Vec<Value>) -> Vec<Value> {
        self.run_plan(addr, strict, "framed", None, steps)
    }

    /// [`Thriftpy2::run`] on thriftpy2's `TBufferedTransport`: unframed messages,
    /// as Thrift's generated clients send them.
    pub fn run_unframed(&self, addr: &str, steps: Vec<Value>) -> Vec<Value> {
        self.run_plan(addr, true, "buffered", None, steps)
    }

    /// [`Thriftpy2::run`] over TLS: `tls` is `{"cafile": PATH}`, with
    /// `"certfile"` and `"keyfile"` for a client certificate (thriftpy2's
    /// `make_client` arguments; the server's certificate is verified).
    pub fn run_tls(&self, addr: &str, tls: Value, steps: Vec<Value>) -> Vec<Value> {
        self.run_plan(addr, true, "framed", Some(tls), steps)
    }

    fn run_plan(
        &self,
        addr: &str,
        strict: bool,
        transport: &str,
        tls: Option<Value>,
        steps: Vec<Value>,
    ) -> Vec<Value> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let (host, port) = addr
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{addr} is not host:port"));
        let mut plan = json!({
            "host": host,
            "port": port.parse::<u16>().unwrap_or_else(|e| panic!("port of {addr}: {e}")),
            "strict": strict,
            "transport": transport,
            "steps": steps,
        });
        if let Some(tls) = tls {
            plan["tls"] = tls;
        }
        let plan_path: PathBuf = self.dir.path().join(format!(
            "plan-{}.json",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&plan_path, serde_json::to_vec(&plan).expect("plan as JSON"))
            .expect("write the plan");
        let out = Command::new("python3")
            .arg(self.dir.path().join("driver.py"))
            .arg(self.dir.path().join("scribe.thrift"))
            .arg(&plan_path)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "python driver failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("the driver prints UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
            .collect()
    }
}

/// A plan step: one `Log` call of `(category, message)` entries.
pub fn log_step(entries: &[(&str, Vec<u8>)]) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .map(|(c, m)| json!([c, base64::engine::general_purpose::STANDARD.encode(m)]))
        .collect();
    json!({"op": "log", "entries": entries})
}

/// Reads until the peer closes the connection (EOF or reset); false on timeout.
pub async fn closed_by_peer(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}
