//! TLS for client connections: rustls, configured from PEM files at start.
//!
//! A configuration that cannot be used stops the server before it listens: a server asked for
//! TLS never falls back to plaintext.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol name PostgreSQL 17 clients send for a direct TLS connection
/// (`sslnegotiation=direct`).
const POSTGRESQL_ALPN: &[u8] = b"postgresql";

/// What the command line says about TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Refuse connections that did not negotiate TLS.
    pub required: bool,
}

/// TLS as the server runs it.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: Option<TlsAcceptor>,
    pub required: bool,
}

impl Tls {
    /// Loads the certificate chain and key, or says exactly what is wrong with them.
    pub fn configure(options: &TlsOptions) -> Result<Tls, String> {
        let (cert, key) = match (&options.cert, &options.key) {
            (None, None) if options.required => {
                return Err("--tls-required needs --tls-cert and --tls-key".into());
            }
            (None, None) => {
                return Ok(Tls {
                    acceptor: None,
                    required: false,
                });
            }
            (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
            (Some(cert), Some(key)) => (cert, key),
        };
        let chain = load_certificates(cert, "--tls-cert")?;
        let key = load_key(key, "--tls-key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                format!(
                    "--tls-cert {} and --tls-key do not make a usable pair: {e}",
                    cert.display()
                )
            })?;
        config.alpn_protocols = vec![POSTGRESQL_ALPN.to_vec()];
        Ok(Tls {
            acceptor: Some(TlsAcceptor::from(Arc::new(config))),
            required: options.required,
        })
    }
}

fn load_certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(chain)
}

fn load_key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{flag} {}: no usable PEM private key: {e}", path.display()))
}

/// What the command line says about TLS between cluster nodes.
#[derive(Debug, Clone, Default)]
pub struct ClusterTlsOptions {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

impl ClusterTlsOptions {
    /// Mutual TLS between nodes, checked as rustls will use it (the node's certificate and key
    /// make a pair, the CA can verify peers), or `None` without any of the three flags.
    pub fn configure(&self) -> Result<Option<quiver_catalog::raft::TransportTls>, String> {
        let (cert, key, ca) = match (&self.cert, &self.key, &self.ca) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
            _ => {
                return Err(
                    "TLS between cluster nodes needs --raft-tls-cert, --raft-tls-key and \
                     --raft-tls-ca together"
                        .into(),
                );
            }
        };
        let chain = load_certificates(cert, "--raft-tls-cert")?;
        let private_key = load_key(key, "--raft-tls-key")?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in load_certificates(ca, "--raft-tls-ca")? {
            roots.add(certificate).map_err(|e| {
                format!(
                    "--raft-tls-ca {}: not a usable CA certificate: {e}",
                    ca.display()
                )
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("--raft-tls-ca {}: {e}", ca.display()))?;
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, private_key)
            .map_err(|e| {
                format!(
                    "--raft-tls-cert {} and --raft-tls-key do not make a usable pair: {e}",
                    cert.display()
                )
            })?;
        let read = |path: &Path, flag: &str| {
            std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
        };
        Ok(Some(quiver_catalog::raft::TransportTls {
            cert_pem: read(cert, "--raft-tls-cert")?,
            key_pem: read(key, "--raft-tls-key")?,
            ca_pem: read(ca, "--raft-tls-ca")?,
        }))
    }
}
