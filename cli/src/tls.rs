//! The TLS flags of commands that connect to a collector (`--tls-ca`,
//! `--tls-cert`, `--tls-key`, `--tls-server-name`), one definition for all.

use std::path::PathBuf;

use clap::Args;
use conduit_core::tls::ClientTls;

/// How a command connects to a TLS collector port. Without `--tls-ca` it
/// connects in plain text.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Connect over TLS, trusting the CAs of this PEM bundle (the one that
    /// signed the collectors' certificates). Default: plain text.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// PEM client certificate to present (collectors with tls_client_ca ask
    /// for one); needs --tls-key and --tls-ca.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Name the collector's certificate must carry, instead of the host of the
    /// address dialled (for collectors reached by IP address or through a
    /// load balancer).
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The TLS settings, or `None` for plain text; an error for TLS flags
    /// without `--tls-ca`.
    pub fn client_tls(&self) -> anyhow::Result<Option<ClientTls>> {
        let Some(ca) = &self.tls_ca else {
            if self.tls_cert.is_some() || self.tls_server_name.is_some() {
                anyhow::bail!("--tls-cert, --tls-key and --tls-server-name need --tls-ca");
            }
            return Ok(None);
        };
        Ok(Some(ClientTls {
            ca: ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        }))
    }
}
