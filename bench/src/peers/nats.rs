//! NATS JetStream as a peer: a private `nats-server` ([`start_nats`]) and a
//! minimal client of the NATS text protocol.
//!
//! The client: [`connect`] sends `CONNECT` + `PING` and waits for `PONG`; the read
//! side ([`ReadSide::op`]) yields one protocol operation at a time (`MSG`/`HMSG`
//! with subject, reply subject, headers and body; `PING`; `PONG`; anything else);
//! the write side is a buffered half behind a mutex ([`Writer`]), shared by a
//! task that publishes and one that reads and answers `PING`s. [`Control`] sends
//! JetStream API requests (`$JS.API.*`) and returns their JSON replies.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

/// How long nats-server may take to listen (the peer script may apt-get install
/// it first).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a JetStream API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The subject [`Control`] receives its replies on.
const CONTROL_INBOX: &str = "_INBOX.ctl";

/// A running private nats-server.
#[derive(Debug)]
pub struct NatsServer {
    /// The peer script's process, which execs nats-server: its pid is the server's.
    pub child: tokio::process::Child,
    /// The server's pid (for `/proc` samples and SIGTERM).
    pub pid: u32,
    /// The client port on 127.0.0.1.
    pub port: u16,
}

/// Starts a private nats-server through the peer script `script` (`serve`), with
/// its store and log in `dir`, and waits until it listens.
pub async fn start_nats(script: &Path, dir: &Path) -> anyhow::Result<NatsServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log_path = dir.join("nats-server.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = tokio::process::Command::new("bash")
        .arg(script)
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--port")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", script.display()))?;
    let pid = child.id().context("no pid")?;
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "nats-server exited ({status}): {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "nats-server did not listen on port {port} within {} s",
                LISTEN_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(NatsServer { child, pid, port })
}

impl NatsServer {
    /// SIGTERM, up to 30 s for the exit, then SIGKILL.
    pub async fn stop(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pid = self.pid,
                "nats-server ignored SIGTERM for 30 s; killing it"
            );
        }
        let _ = self.child.kill().await;
    }
}

/// The buffered write half of a connection, shared between tasks.
pub type Writer = Arc<tokio::sync::Mutex<BufWriter<tokio::net::tcp::OwnedWriteHalf>>>;

/// Opens a connection to nats-server on 127.0.0.1:`port`. With `headers`, the
/// server may send `HMSG` (status messages of pull requests, "no responders").
pub async fn connect(port: u16, headers: bool) -> anyhow::Result<(ReadSide, Writer)> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot connect to nats-server on port {port}"))?;
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut rs = ReadSide {
        rd,
        buf: BytesMut::with_capacity(256 << 10),
    };
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    let options = if headers {
        r#""headers":true,"no_responders":true"#
    } else {
        r#""headers":false"#
    };
    // The server sends INFO first; CONNECT + PING, ready once PONG arrives.
    wr.write_all(
        format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,{options}}}\r\nPING\r\n"
        )
        .as_bytes(),
    )
    .await?;
    wr.flush().await?;
    while !matches!(rs.op().await?, Op::Pong) {}
    Ok((rs, Arc::new(tokio::sync::Mutex::new(wr))))
}

/// A connection for JetStream API requests, one at a time.
#[derive(Debug)]
pub struct Control {
    rs: ReadSide,
    wr: Writer,
}

impl Control {
    /// Connects and subscribes to the reply subject.
    pub async fn open(port: u16) -> anyhow::Result<Control> {
        let (rs, wr) = connect(port, true).await?;
        wr.lock()
            .await
            .write_all(format!("SUB {CONTROL_INBOX} 1\r\n").as_bytes())
            .await?;
        Ok(Control { rs, wr })
    }

    /// A request on `subject`; returns the reply body as JSON (JetStream errors
    /// are in it as `"error"`).
    pub async fn request(
        &mut self,
        subject: &str,
        body: &[u8],
    ) -> anyhow::Result<serde_json::Value> {
        {
            let mut w = self.wr.lock().await;
            w.write_all(format!("PUB {subject} {CONTROL_INBOX} {}\r\n", body.len()).as_bytes())
                .await?;
            w.write_all(body).await?;
            w.write_all(b"\r\n").await?;
            w.flush().await?;
        }
        let (rs, wr) = (&mut self.rs, &self.wr);
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, async {
            loop {
                match rs.op().await? {
                    Op::Msg { subject, body, .. }
                        if subject.as_ref() == CONTROL_INBOX.as_bytes() =>
                    {
                        return Ok::<_, anyhow::Error>(body)
                    }
                    Op::Ping => {
                        let mut w = wr.lock().await;
                        w.write_all(b"PONG\r\n").await?;
                        w.flush().await?;
                    }
                    _ => {}
                }
            }
        })
        .await
        .with_context(|| {
            format!(
                "no reply to {subject} within {} s",
                REQUEST_TIMEOUT.as_secs()
            )
        })??;
        serde_json::from_slice(&reply).with_context(|| {
            format!(
                "bad reply to {subject}: {:?}",
                String::from_utf8_lossy(&reply)
            )
        })
    }
}

/// One thing the server sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// `MSG`/`HMSG`: subject, reply subject, headers (empty for `MSG`), body.
    Msg {
        /// The subject the message was published to.
        subject: Bytes,
        /// The reply subject, if the publisher gave one.
        reply: Option<Bytes>,
        /// The header block (empty for `MSG`).
        headers: Bytes,
        /// The payload.
        body: Bytes,
    },
    /// `PING`: the server checks the client is alive (answer `PONG`).
    Ping,
    /// `PONG`: the answer to the client's `PING`.
    Pong,
    /// `INFO`, `+OK` and anything else this client has no use for.
    Other,
}

/// The read half of a NATS connection and its buffer.
#[derive(Debug)]
pub struct ReadSide {
    rd: tokio::net::tcp::OwnedReadHalf,
    /// Received, not yet parsed.
    buf: BytesMut,
}

impl ReadSide {
    async fn fill(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(64 << 10);
        if self.rd.read_buf(&mut self.buf).await? == 0 {
            bail!("nats-server closed the connection");
        }
        Ok(())
    }

    /// Whether a complete operation may already be buffered.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next protocol operation. Cancel-safe: nothing is taken from the buffer
    /// until a whole operation is there (reads are only `read_buf`).
    pub async fn op(&mut self) -> anyhow::Result<Op> {
        loop {
            if let Some(op) = parse(&mut self.buf)? {
                return Ok(op);
            }
            self.fill().await?;
        }
    }
}

/// One complete operation from the front of `buf`, if there is one (then taken
/// from it); `-ERR` is an error.
fn parse(buf: &mut BytesMut) -> anyhow::Result<Option<Op>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[..eol];
    let (parts, has_headers) = if let Some(rest) = line.strip_prefix(b"MSG ") {
        (rest, false)
    } else if let Some(rest) = line.strip_prefix(b"HMSG ") {
        (rest, true)
    } else {
        let op = if line.starts_with(b"PING") {
            Op::Ping
        } else if line.starts_with(b"PONG") {
            Op::Pong
        } else if line.starts_with(b"-ERR") {
            bail!("nats: {}", String::from_utf8_lossy(line));
        } else {
            Op::Other
        };
        buf.advance(eol + 2);
        return Ok(Some(op));
    };
    // MSG <subject> <sid> [reply] <len>; HMSG <subject> <sid> [reply] <hlen> <len>
    let f: Vec<&[u8]> = parts.split(|&b| b == b' ').collect();
    let num = |b: &[u8]| -> anyhow::Result<usize> {
        std::str::from_utf8(b)?
            .parse()
            .with_context(|| format!("bad NATS message line {:?}", String::from_utf8_lossy(line)))
    };
    let (reply, hlen, len) = match (has_headers, f.len()) {
        (false, 3) => (None, 0, num(f[2])?),
        (false, 4) => (Some(f[2]), 0, num(f[3])?),
        (true, 4) => (None, num(f[2])?, num(f[3])?),
        (true, 5) => (Some(f[2]), num(f[3])?, num(f[4])?),
        _ => bail!(
            "unexpected NATS message line {:?}",
            String::from_utf8_lossy(line)
        ),
    };
    if buf.len() < eol + 2 + len + 2 {
        return Ok(None);
    }
    let subject = Bytes::copy_from_slice(f[0]);
    let reply = reply.map(Bytes::copy_from_slice);
    buf.advance(eol + 2);
    let mut all = buf.split_to(len).freeze();
    buf.advance(2);
    let headers = all.split_to(hlen.min(len));
    Ok(Some(Op::Msg {
        subject,
        reply,
        headers,
        body: all,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(subject: &str, reply: Option<&str>, headers: &str, body: &str) -> Op {
        Op::Msg {
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            reply: reply.map(|r| Bytes::copy_from_slice(r.as_bytes())),
            headers: Bytes::copy_from_slice(headers.as_bytes()),
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn parses_operations_one_at_a_time_and_waits_for_whole_messages() {
        let mut buf = BytesMut::from(
            &b"INFO {}\r\nPING\r\nMSG a.b 1 _INBOX.x 5\r\nhello\r\nHMSG s 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\nMSG c 1 3\r\nab"[..],
        );
        assert_eq!(parse(&mut buf).unwrap(), Some(Op::Other));
        assert_eq!(parse(&mut buf).unwrap(), Some(Op::Ping));
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(msg("a.b", Some("_INBOX.x"), "", "hello"))
        );
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(msg("s", None, "NATS/1.0\r\n\r\n", "hi"))
        );
        // The last message is incomplete: nothing is taken.
        assert_eq!(parse(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"MSG c 1 3\r\nab");
        buf.extend_from_slice(b"c\r\n");
        assert_eq!(parse(&mut buf).unwrap(), Some(msg("c", None, "", "abc")));
        assert!(buf.is_empty());
    }

    #[test]
    fn err_is_an_error() {
        let mut buf = BytesMut::from(&b"-ERR 'Authorization Violation'\r\n"[..]);
        let e = parse(&mut buf).unwrap_err();
        assert!(e.to_string().contains("Authorization Violation"), "{e}");
    }
}
