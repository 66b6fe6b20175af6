//! Who may connect to a collector (issue 14, "the front door"): TLS with client
//! certificates on the Scribe and HTTP ports, and the allow-list of client
//! networks. Each test runs a real `conduit collector` process, with
//! certificates made here by `rcgen`, and real clients: the conduit publisher
//! library, `conduit publish`, Python's thriftpy2 over its TLS socket, `curl`
//! and `openssl s_client` (when installed), and raw sockets for the clients that
//! must be refused.
//!
//! Log lines are rate-limited (one per kind per 10 s), so each test asserts only
//! the first line of a kind in each collector process.
//!
//! `cargo test -p conduit-tests --test front_door_tls -- --nocapture` prints
//! the figures `docs/reliability.md` records.

mod door;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use conduit_core::scribe::{decode_reply, encode_log_call, read_frame, ReplyValue, ResultCode};
use conduit_core::tls::{ClientTls, TlsClient};
use conduit_publisher::Publisher;
use conduit_testkit::process::{http_get, metric, run_conduit, CollectorProcess};
use conduit_testkit::scribe::{closed_by_peer, log_step, Client, Thriftpy2};
use conduit_testkit::wait::until_blocking;
use door::{connect_from, runtime, Scene, ID};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA, a collector certificate for `localhost` and `127.0.0.1`, a client
/// certificate from that CA and one from another CA, as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();
        let ca = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("ca");
        let (other_cert, other_key) = ca("other-ca");
        for (name, sans, (signer, signer_key)) in [
            (
                "collector",
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
                (&ca_cert, &ca_key),
            ),
            (
                "client",
                vec!["publisher-1".to_owned()],
                (&ca_cert, &ca_key),
            ),
            (
                "stranger",
                vec!["stranger".to_owned()],
                (&other_cert, &other_key),
            ),
        ] {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(sans)
                .unwrap()
                .signed_by(&key, signer, signer_key)
                .unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The `[collector]` lines of a TLS Scribe port asking for client
    /// certificates.
    fn collector_config(&self) -> String {
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\ntls_client_ca = {:?}\n",
            self.path("collector.pem"),
            self.path("collector.key"),
            self.path("ca.pem"),
        )
    }

    /// A client trusting the CA, presenting `identity` (`client`, `stranger`) if
    /// given.
    fn client(&self, identity: Option<&str>) -> ClientTls {
        ClientTls {
            ca: self.path("ca.pem").into(),
            cert: identity.map(|id| self.path(&format!("{id}.pem")).into()),
            key: identity.map(|id| self.path(&format!("{id}.key")).into()),
            server_name: None,
        }
    }
}

/// One `Log` call of `messages` to `topic` on `stream`: its result code, or what
/// went wrong (the connection closed, an alert, a timeout).
async fn log_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    topic: &str,
    messages: &[&str],
) -> Result<ResultCode, String> {
    let entries: Vec<(&[u8], &[u8])> = messages
        .iter()
        .map(|m| (topic.as_bytes(), m.as_bytes()))
        .collect();
    let mut out = Vec::new();
    encode_log_call(1, &entries, &mut out);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let frame = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame(stream, 1 << 20, &mut BytesMut::new()),
    )
    .await
    .map_err(|_| "no reply within 10 s".to_owned())?
    .map_err(|e| e.to_string())?
    .ok_or_else(|| "closed by the collector".to_owned())?;
    match decode_reply(frame).map_err(|e| e.to_string())?.value {
        ReplyValue::ResultCode(code) => Ok(code),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// A `Log` call over TLS as `tls` from 127.0.0.1: its result code or what went
/// wrong, and the local address it came from.
async fn tls_log(
    addr: &str,
    tls: &ClientTls,
    topic: &str,
    messages: &[&str],
) -> (Result<ResultCode, String>, String) {
    let client = TlsClient::new(tls.clone()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap().to_string();
    let result = match client.connect(addr, tcp).await {
        Ok(mut stream) => log_on(&mut stream, topic, messages).await,
        Err(e) => Err(format!("handshake: {e}")),
    };
    (result, local)
}

/// `GET path` over TLS as `tls`: status and body.
async fn https_get(addr: &str, tls: &ClientTls, path: &str) -> Result<(u16, String), String> {
    let client = TlsClient::new(tls.clone()).unwrap();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut stream = client
        .connect(addr, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad response {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The first log line containing `needle`.
fn log_line(collector: &CollectorProcess, needle: &str) -> Option<String> {
    collector
        .log()
        .lines()
        .find(|l| l.contains(needle))
        .map(str::to_owned)
}

/// Waits until the collector has logged a line containing `needle`.
fn logged(collector: &CollectorProcess, needle: &str) -> String {
    until_blocking(needle, Duration::from_secs(10), || {
        log_line(collector, needle)
    })
    .unwrap_or_else(|e| panic!("{e}; collector log:\n{}", collector.log()))
}

/// A counter of the collector's `/metrics` (plain HTTP), 0 when absent.
fn counter(collector: &CollectorProcess, name: &str) -> f64 {
    metric(&collector.metrics(), name).unwrap_or(0.0)
}

const TLS_REFUSED: &str = r#"conduit_collector_connection_errors_total{reason="tls_handshake"}"#;
const NOT_ALLOWED: &str = r#"conduit_collector_connection_errors_total{reason="not_allowed"}"#;

/// On a TLS port asking for client certificates: the publisher library and
/// `conduit publish` with a certificate from the CA are served and their events
/// stored; a client without a certificate, one with a certificate from another
/// CA, a plain Scribe client and a client that never handshakes are each closed
/// and counted, while the good publisher keeps getting acks.
#[test]
fn client_certificates_decide_who_is_served_on_a_tls_scribe_port() {
    const EVENTS: usize = 2000;
    let t0 = Instant::now();
    let scene = Scene::new();
    let pki = Pki::new(scene.dir.path());
    let rt = runtime();
    let collector = scene.start(&format!(
        "{}first_call_timeout_ms = 1500\n",
        pki.collector_config()
    ));
    let addr = collector.thrift_addr.clone();
    assert_eq!(counter(&collector, TLS_REFUSED), 0.0);

    // The publisher library with a client certificate.
    let publisher = rt.block_on(async {
        Publisher::builder()
            .collectors([addr.clone()])
            .tls(pki.client(Some("client")))
            .build()
            .await
            .unwrap()
    });
    let publish = |from: usize, n: usize| {
        rt.block_on(async {
            for i in from..from + n {
                publisher
                    .publish("tls_events", format!("event-{i}"))
                    .await
                    .unwrap();
            }
            tokio::time::timeout(Duration::from_secs(30), publisher.flush())
                .await
                .expect("flushed within 30 s")
                .unwrap();
        })
    };
    publish(0, EVENTS / 2);
    assert_eq!(publisher.stats().acknowledged, (EVENTS / 2) as u64);

    // No client certificate: the collector ends the handshake, nothing is stored.
    let (result, peer) = rt.block_on(tls_log(&addr, &pki.client(None), "tls_refused", &["x"]));
    assert!(result.is_err(), "served without a client certificate");
    let line = logged(&collector, "tls handshake failed");
    assert!(
        line.contains(&peer),
        "the log names the peer {peer}: {line}"
    );
    assert!(
        line.to_lowercase().contains("certificate"),
        "the log gives rustls's reason: {line}"
    );
    assert_eq!(counter(&collector, TLS_REFUSED), 1.0);

    // A certificate from another CA.
    let (result, _) = rt.block_on(tls_log(
        &addr,
        &pki.client(Some("stranger")),
        "tls_refused",
        &["x"],
    ));
    assert!(result.is_err(), "served with a certificate of another CA");

    // A plain Scribe client on the TLS port.
    let plain = rt.block_on(async {
        let mut client = Client::connect(&addr).await;
        client
            .try_log(&[("tls_refused", "plain")], Duration::from_secs(10))
            .await
    });
    assert_eq!(plain, None, "a plain Scribe call on a TLS port is answered");

    // A client that opens the connection and never says hello is closed at
    // first_call_timeout_ms.
    let silent_closed_after = rt.block_on(async {
        let started = Instant::now();
        let mut silent = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_by_peer(&mut silent, Duration::from_secs(10)).await);
        started.elapsed()
    });
    assert!(
        silent_closed_after >= Duration::from_millis(1400),
        "closed after {silent_closed_after:?}, before first_call_timeout_ms"
    );
    until_blocking(
        "4 refused handshakes counted",
        Duration::from_secs(10),
        || (counter(&collector, TLS_REFUSED) == 4.0).then_some(()),
    )
    .unwrap();

    // The good publisher was never disturbed: the rest is acked too.
    publish(EVENTS / 2, EVENTS / 2);
    let stats = publisher.stats();
    assert_eq!(stats.acknowledged, EVENTS as u64);
    assert_eq!(stats.failed, 0);
    rt.block_on(publisher.close()).unwrap();

    // `conduit publish` with the flags.
    let lines: String = (0..100).map(|i| format!("cli-{i}\n")).collect();
    let ran = run_conduit(
        &[
            "publish",
            "--topic",
            "tls_cli",
            "--collector",
            &addr,
            "--tls-ca",
            &pki.path("ca.pem"),
            "--tls-cert",
            &pki.path("client.pem"),
            "--tls-key",
            &pki.path("client.key"),
        ],
        lines.as_bytes(),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(ran.code, 0, "conduit publish over TLS: {}", ran.stderr);

    // What was acknowledged is stored, once; nothing of the refused clients.
    let stored = scene.payloads("tls_events");
    assert_eq!(stored.len(), EVENTS);
    let expected: std::collections::BTreeSet<String> =
        (0..EVENTS).map(|i| format!("event-{i}")).collect();
    assert_eq!(
        stored
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    assert_eq!(scene.payloads("tls_cli").len(), 100);
    assert!(scene.payloads("tls_refused").is_empty());
    println!(
        "tls scribe: {EVENTS} events acked and stored by the publisher library, 100 by conduit publish; \
         refused: no certificate, another CA's certificate, plain Scribe, silent (closed after {silent_closed_after:?}); \
         tls_handshake counter {}; wall {:?}",
        counter(&collector, TLS_REFUSED),
        t0.elapsed()
    );
}

/// thriftpy2 (a third-party Scribe client, Python's `ssl` underneath) and
/// `openssl s_client` against a TLS Scribe port with client certificates.
#[test]
fn third_party_clients_speak_scribe_over_tls() {
    let scene = Scene::new();
    let pki = Pki::new(scene.dir.path());
    let collector = scene.start(&pki.collector_config());
    let addr = collector.thrift_addr.clone();

    if conduit_testkit::gate::python("third_party_clients_speak_scribe_over_tls", "thriftpy2") {
        let py = Thriftpy2::new();
        let messages: Vec<(&str, Vec<u8>)> = (0..50)
            .map(|i| ("tls_python", format!("py-{i}").into_bytes()))
            .collect();
        let out = py.run_tls(
            &addr,
            json!({
                "cafile": pki.path("ca.pem"),
                "certfile": pki.path("client.pem"),
                "keyfile": pki.path("client.key"),
            }),
            vec![log_step(&messages), log_step(&messages[..10])],
        );
        assert_eq!(out.len(), 2, "{out:?}");
        for step in &out {
            assert_eq!(step["code"], json!(0), "thriftpy2 over TLS: {out:?}");
        }
        assert_eq!(scene.payloads("tls_python").len(), 60);
        println!("thriftpy2 over TLS with a client certificate: 60 events acked and stored");
    }

    if conduit_testkit::gate::tool("third_party_clients_speak_scribe_over_tls", "openssl") {
        let s_client = |identity: Option<&str>| {
            let mut cmd = Command::new("openssl");
            cmd.args([
                "s_client",
                "-connect",
                &addr,
                "-CAfile",
                &pki.path("ca.pem"),
            ])
            .args(["-verify_return_error", "-brief"]);
            if let Some(id) = identity {
                cmd.args(["-cert", &pki.path(&format!("{id}.pem"))])
                    .args(["-key", &pki.path(&format!("{id}.key"))]);
            }
            // stdin closed: s_client ends the session once it is up.
            let out = cmd
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run openssl");
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        };
        let with_cert = s_client(Some("client"));
        assert!(
            with_cert.contains("CONNECTION ESTABLISHED") && with_cert.contains("Verification: OK"),
            "openssl s_client with a client certificate: {with_cert}"
        );
        println!(
            "openssl s_client: {}",
            with_cert
                .lines()
                .filter(|l| l.starts_with("Protocol") || l.starts_with("Ciphersuite"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// The HTTP port over TLS (`http_tls`): `/health` and `/metrics` answer a client
/// with a certificate (the Rust client here, and `curl` when installed); a client
/// without one is refused and counted.
#[test]
fn http_answers_over_tls_with_client_certificates() {
    let scene = Scene::new();
    let pki = Pki::new(scene.dir.path());
    let rt = runtime();
    let collector = scene.start(&format!("{}http_tls = true\n", pki.collector_config()));
    let http = collector.http_addr.clone();
    let client = pki.client(Some("client"));

    let (status, body) = rt.block_on(https_get(&http, &client, "/health")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"ok""#), "{body}");

    // Plain HTTP on the TLS port gets no answer.
    let plain = http_get(&http, "/health");
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP answered on a TLS port: {plain:?}"
    );
    // No client certificate: refused.
    let refused = rt.block_on(https_get(&http, &pki.client(None), "/health"));
    assert!(
        refused.is_err(),
        "served without a certificate: {refused:?}"
    );

    let closed = r#"conduit_http_connections_closed_total{reason="tls_handshake"}"#;
    let count = until_blocking("2 refused http handshakes", Duration::from_secs(10), || {
        let (_, metrics) = rt.block_on(https_get(&http, &client, "/metrics")).ok()?;
        metric(&metrics, closed).filter(|n| *n >= 2.0)
    })
    .unwrap();
    logged(&collector, "http tls handshake failed");

    if conduit_testkit::gate::tool("http_answers_over_tls_with_client_certificates", "curl") {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert", &pki.path("ca.pem")])
            .args([
                "--cert",
                &pki.path("client.pem"),
                "--key",
                &pki.path("client.key"),
            ])
            .arg(format!("https://{http}/health"))
            .output()
            .expect("run curl");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && body.contains(r#""status":"ok""#),
            "curl over TLS: {body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("curl --cacert --cert --key https://{http}/health: {body}");
    }
    println!("http over tls: /health 200 with a client certificate; refused without one ({count} counted)");
}

/// `allow_networks` refuses a client outside it at accept on both ports (closed,
/// counted, the peer named in the log) and serves one inside it; from flags
/// alone (`--allow-network`) as from the config.
#[test]
fn an_address_outside_allow_networks_is_closed_at_accept() {
    let scene = Scene::new();
    let rt = runtime();
    // 127.0.0.2 stands for the allowed network (and reads the metrics); the
    // test's client at 127.0.0.1 is outside.
    let collector = scene.start(r#"allow_networks = ["10.0.0.0/8", "127.0.0.2/32"]"#);
    let addr = collector.thrift_addr.clone();
    let metrics_from_allowed = || {
        rt.block_on(async {
            let mut s = connect_from("127.0.0.2", &collector.http_addr)
                .await
                .unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        })
    };
    let sample = |name: &str| metric(&metrics_from_allowed(), name).unwrap_or(0.0);
    assert_eq!(sample(NOT_ALLOWED), 0.0);

    let (refused, peer) = rt.block_on(async {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let peer = s.local_addr().unwrap().to_string();
        (
            log_on(&mut s, "allowed_only", &["from 127.0.0.1"]).await,
            peer,
        )
    });
    assert!(refused.is_err(), "127.0.0.1 served: {refused:?}");
    let http_refused = http_get(&collector.http_addr, "/health");
    assert!(
        http_refused.is_err(),
        "http served 127.0.0.1: {http_refused:?}"
    );

    let served = rt.block_on(async {
        let mut s = connect_from("127.0.0.2", &addr).await.unwrap();
        log_on(&mut s, "allowed_only", &["from 127.0.0.2"]).await
    });
    assert_eq!(served, Ok(ResultCode::Ok));
    assert_eq!(sample(NOT_ALLOWED), 1.0);
    assert_eq!(
        sample(r#"conduit_http_connections_closed_total{reason="not_allowed"}"#),
        1.0
    );
    let line = logged(&collector, "outside allow_networks: closed");
    assert!(
        line.contains(&peer),
        "the log names the peer {peer}: {line}"
    );
    assert!(
        line.contains("10.0.0.0/8"),
        "the log names the list: {line}"
    );
    assert_eq!(scene.payloads("allowed_only"), vec!["from 127.0.0.2"]);
    drop(collector);

    // From flags alone: 127.0.0.0/8 lets the test's client in.
    let flags = CollectorProcess::start(
        &scene.root(),
        &format!("{ID}b"),
        &[
            "--allow-network",
            "127.0.0.0/8",
            "--allow-network",
            "fd00::/8",
        ],
        &scene.logs(),
    )
    .expect("collector starts");
    let code = rt.block_on(async {
        let mut s = TcpStream::connect(&flags.thrift_addr).await.unwrap();
        log_on(&mut s, "allowed_flags", &["x"]).await
    });
    assert_eq!(code, Ok(ResultCode::Ok));
    assert_eq!(counter(&flags, NOT_ALLOWED), 0.0);

    // A bad entry is a config error naming it, for `conduit check` too.
    let config = scene.config(r#"allow_networks = ["10.0.0.0/33"]"#);
    let check = run_conduit(
        &["check", "--config", &config],
        b"",
        Duration::from_secs(30),
    )
    .unwrap();
    assert_ne!(check.code, 0);
    assert!(
        (check.stdout.clone() + &check.stderr).contains("\"10.0.0.0/33\" is not a network"),
        "{check:?}"
    );
    println!("allow_networks: 127.0.0.1 closed at accept on both ports and counted; 127.0.0.2 and, by flags, 127.0.0.0/8 served");
}
