//! TLS for a listener group: rustls with the ring provider, ALPN `h2` and `http/1.1`, and a certificate
//! that is replaced when its files change (new handshakes get the new one; established connections keep
//! theirs).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::watch;

use super::{watch_files, Reloading, TlsFiles};

/// A TLS acceptor whose certificate follows `files`.
pub(super) fn acceptor(
    files: &TlsFiles,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert_file, key_file) = (files.cert_file.clone(), files.key_file.clone());
    let key_provider = provider.clone();
    let certified = watch_files(
        "TLS certificate",
        vec![files.cert_file.clone(), files.key_file.clone()],
        interval,
        move || load_certified_key(&key_provider, &cert_file, &key_file),
        shutdown,
    )?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certified)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Reads a PEM certificate chain and its private key, and checks that they belong together.
fn load_certified_key(
    provider: &rustls::crypto::CryptoProvider,
    cert_file: &Path,
    key_file: &Path,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading certificates from {}", cert_file.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert_file.display());
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading a private key from {}", key_file.display()))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("loading the private key in {}", key_file.display()))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(error) => Err(error).with_context(|| {
            format!(
                "the key in {} does not belong to the certificate in {}",
                key_file.display(),
                cert_file.display()
            )
        }),
    }
}

/// Hands every handshake the certificate loaded last.
struct Resolver(Arc<Reloading<CertifiedKey>>);

impl fmt::Debug for Resolver {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}
