//! TLS for conduit's ports: PEM files to rustls configurations, in one place.
//!
//! A collector serves TLS on its Scribe port (and, with `collector.http_tls`, on
//! its HTTP port) from `collector.tls_cert` and `collector.tls_key`; with
//! `collector.tls_client_ca` every client must present a certificate signed by a
//! CA of that bundle. Publishers and `conduit publish` connect with a
//! [`ClientTls`]: the CA bundle that signed the collectors' certificates, an
//! optional client certificate and key, an optional server name (by default the
//! host of the address dialled). Every function here reads its files itself and
//! names the file in its error ([`TlsError`]).
//!
//! rustls with the `ring` provider is used explicitly (never the process-wide
//! default provider), so nothing depends on which provider another crate turned
//! on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
pub use tokio_rustls::{client::TlsStream as ClientStream, server::TlsStream as ServerStream};
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What went wrong building a TLS configuration; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file was for (`certificate`, `private key`, `CA bundle`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind needed, or is not PEM.
    #[error("{what} {path}: {message}")]
    Pem {
        /// What the file was for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificates or key (key does not match, bad CA, ...).
    #[error("{what}: {source}")]
    Rustls {
        /// The files concerned.
        what: String,
        /// rustls's error.
        #[source]
        source: rustls::Error,
    },
    /// The client CA bundle cannot verify client certificates.
    #[error("client CA bundle {path}: {message}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A server name that is neither a DNS name nor an IP address.
    #[error("{name:?} is not a server name (a DNS name or an IP address)")]
    ServerName {
        /// The name given.
        name: String,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("a client certificate and its key go together: give both or neither")]
    HalfIdentity,
}

/// The ring provider every configuration here uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file (at least one).
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_owned(),
            message: "no CERTIFICATE found (expected PEM)".to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what,
        path: path.to_owned(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY found (expected PEM)".to_owned()
            }
            e => e.to_string(),
        },
    })
}

/// The certificates of a CA bundle as a root store.
fn load_roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: format!("{what} {}", path.display()),
            source,
        })?;
    }
    Ok(roots)
}

/// What a TLS server serves: its certificate chain and key, and the CA bundle
/// client certificates must be signed by (`None`: no client certificate asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM bundle of the CAs that sign client certificates; when set, a client
    /// without a valid certificate fails the handshake.
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    /// The rustls server configuration (reads every file now).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let certs = load_certs("certificate", &self.cert)?;
        let key = load_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "tls protocol versions".to_owned(),
                source,
            })?;
        let builder = match &self.client_ca {
            Some(path) => {
                let roots = load_roots("client CA bundle", path)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            path: path.clone(),
                            message: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::Rustls {
                what: format!(
                    "certificate {} with key {}",
                    self.cert.display(),
                    self.key.display()
                ),
                source,
            })?;
        Ok(Arc::new(config))
    }

    /// An acceptor for [`ServerTls::server_config`].
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor::from(self.server_config()?))
    }
}

/// How a client connects over TLS: the CAs it trusts, its own certificate (for
/// servers that ask for one) and the name it expects the server's certificate
/// to carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM bundle of the CAs that sign the servers' certificates.
    pub ca: PathBuf,
    /// PEM client certificate chain (with [`ClientTls::key`]).
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key: Option<PathBuf>,
    /// The name to check the server's certificate against, instead of the host
    /// of the address dialled.
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Trusting the CAs of `ca`, with no client certificate.
    pub fn new(ca: impl Into<PathBuf>) -> ClientTls {
        ClientTls {
            ca: ca.into(),
            ..ClientTls::default()
        }
    }

    /// The rustls client configuration (reads every file now).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let roots = load_roots("CA bundle", &self.ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "tls protocol versions".to_owned(),
                source,
            })?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let certs = load_certs("client certificate", cert)?;
                builder
                    .with_client_auth_cert(certs, load_key(key)?)
                    .map_err(|source| TlsError::Rustls {
                        what: format!(
                            "client certificate {} with key {}",
                            cert.display(),
                            key.display()
                        ),
                        source,
                    })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::HalfIdentity),
        };
        Ok(Arc::new(config))
    }

    /// A connector for [`ClientTls::client_config`].
    pub fn connector(&self) -> Result<TlsConnector, TlsError> {
        Ok(TlsConnector::from(self.client_config()?))
    }

    /// The name to verify for a server dialled at `addr` (`host:port`,
    /// `[v6]:port`): [`ClientTls::server_name`] if set, else the host of `addr`.
    pub fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, TlsError> {
        let name = match &self.server_name {
            Some(name) => name.as_str(),
            None => host_of(addr),
        };
        server_name(name)
    }
}

/// A TLS client ready to connect: [`ClientTls`] with its files read.
#[derive(Clone)]
pub struct TlsClient {
    settings: ClientTls,
    connector: TlsConnector,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Reads the files of `settings`.
    pub fn new(settings: ClientTls) -> Result<TlsClient, TlsError> {
        let connector = settings.connector()?;
        Ok(TlsClient {
            settings,
            connector,
        })
    }

    /// The settings it was made from.
    pub fn settings(&self) -> &ClientTls {
        &self.settings
    }

    /// Handshakes over `stream`, a connection to `addr`, checking the server's
    /// certificate against [`ClientTls::server_name_for`]`(addr)`.
    pub async fn connect<S>(&self, addr: &str, stream: S) -> std::io::Result<ClientStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = self
            .settings
            .server_name_for(addr)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.connector.connect(name, stream).await
    }
}

/// `name` as a server name to verify (a DNS name or an IP address).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName {
        name: name.to_owned(),
    })
}

/// The host part of `host:port` or `[v6]:port` (all of `addr` without a port).
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        /// A CA, a server certificate for localhost/127.0.0.1 and a client
        /// certificate, as PEM files.
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca.self_signed(&ca_key).unwrap();
            let write =
                |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
            write("ca.pem", ca.pem());
            for (name, sans) in [
                (
                    "server",
                    vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
                ),
                ("client", vec!["client".to_owned()]),
            ] {
                let key = rcgen::KeyPair::generate().unwrap();
                let cert = rcgen::CertificateParams::new(sans)
                    .unwrap()
                    .signed_by(&key, &ca, &ca_key)
                    .unwrap();
                write(&format!("{name}.pem"), cert.pem());
                write(&format!("{name}.key"), key.serialize_pem());
            }
            Pki { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn server(&self, client_ca: bool) -> ServerTls {
            ServerTls {
                cert: self.path("server.pem"),
                key: self.path("server.key"),
                client_ca: client_ca.then(|| self.path("ca.pem")),
            }
        }

        fn client(&self, cert: bool) -> ClientTls {
            ClientTls {
                ca: self.path("ca.pem"),
                cert: cert.then(|| self.path("client.pem")),
                key: cert.then(|| self.path("client.key")),
                server_name: None,
            }
        }
    }

    /// Handshakes `client` with `server` over a loopback socket; `Ok` with the
    /// bytes echoed, or the client's or the server's error.
    async fn handshake(server: &ServerTls, client: &ClientTls) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let acceptor = server.acceptor().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            tls.write_all(&byte).await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())
        });
        let connector = client.connector().unwrap();
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = client.server_name_for(&addr).unwrap();
        let dialled = async {
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(byte)
        }
        .await;
        let served = served.await.unwrap();
        served.map_err(|e| format!("server: {e}"))?;
        assert_eq!(&dialled.map_err(|e| format!("client: {e}"))?, b"x");
        Ok(())
    }

    #[tokio::test]
    async fn a_client_certificate_is_required_when_a_client_ca_is_set() {
        let pki = Pki::new();
        handshake(&pki.server(false), &pki.client(false))
            .await
            .unwrap();
        handshake(&pki.server(true), &pki.client(true))
            .await
            .unwrap();
        let refused = handshake(&pki.server(true), &pki.client(false))
            .await
            .unwrap_err();
        assert!(refused.contains("server:"), "{refused}");
    }

    #[test]
    fn errors_name_the_file() {
        let pki = Pki::new();
        let missing = ServerTls {
            cert: pki.path("nope.pem"),
            ..pki.server(false)
        };
        let e = missing.server_config().unwrap_err().to_string();
        assert!(
            e.contains("nope.pem") && e.starts_with("cannot read certificate"),
            "{e}"
        );
        let not_pem = ServerTls {
            key: pki.path("server.pem"),
            ..pki.server(false)
        };
        let e = not_pem.server_config().unwrap_err().to_string();
        assert!(
            e.contains("server.pem") && e.contains("no PRIVATE KEY"),
            "{e}"
        );
        let mismatched = ServerTls {
            key: pki.path("client.key"),
            ..pki.server(false)
        };
        let e = mismatched.server_config().unwrap_err().to_string();
        assert!(e.contains("client.key"), "{e}");
        let half = ClientTls {
            key: None,
            ..pki.client(true)
        };
        assert!(matches!(half.client_config(), Err(TlsError::HalfIdentity)));
    }

    #[test]
    fn server_name_defaults_to_the_host_dialled() {
        let client = ClientTls::new("ca.pem");
        for (addr, host) in [
            ("127.0.0.1:1463", "127.0.0.1"),
            ("localhost:1463", "localhost"),
            ("[::1]:1463", "::1"),
            ("collector.example", "collector.example"),
        ] {
            assert_eq!(
                client.server_name_for(addr).unwrap(),
                server_name(host).unwrap()
            );
        }
        let named = ClientTls {
            server_name: Some("c1.example".into()),
            ..client
        };
        assert_eq!(
            named.server_name_for("10.0.0.1:1463").unwrap(),
            server_name("c1.example").unwrap()
        );
        assert!(server_name("not a name").is_err());
    }
}
