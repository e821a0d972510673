//! Connecting to PostgreSQL: URL parsing with libpq's `sslmode` semantics, rustls TLS, and the pool.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

/// How to reach PostgreSQL.
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// A libpq-style URL (`postgres://user:pass@host:port/db?sslmode=prefer`).
    pub url: String,
    /// A PEM file of CA certificates; when set, the server's certificate and host name are verified.
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long to wait for a connection to be established.
    pub connect_timeout: Duration,
    /// Longest time any one statement may run on a pooled connection before PostgreSQL cancels it (SQLSTATE 57014); `None` leaves the server's setting.
    pub statement_timeout: Option<Duration>,
}

/// The default [`DatabaseConfig::statement_timeout`]: longer than any query the API should make, shorter than
/// a client waits.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

impl DatabaseConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Some(DEFAULT_STATEMENT_TIMEOUT),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    #[error("cannot read database ca file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("cannot build connection pool: {0}")]
    Pool(String),
}

/// tracepost's database: a pool of connections, opened lazily. Cheap to clone (clones share the pool). What
/// the driver is stays inside this crate.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("Database")
            .field("connections", &status.size)
            .field("max_connections", &status.max_size)
            .finish()
    }
}

impl Database {
    /// Runs one SQL statement on a pooled connection, with the session settings every pooled connection has,
    /// and returns the first column of its first row as text, if any (checks by operators and tests:
    /// `SHOW statement_timeout`).
    pub async fn query_text(&self, sql: &str) -> Result<Option<String>, crate::StorageError> {
        let client = self.get().await?;
        let rows = client.simple_query(sql).await?;
        Ok(rows.iter().find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        }))
    }

    /// A pooled connection.
    pub(crate) async fn get(&self) -> Result<deadpool_postgres::Object, deadpool_postgres::PoolError> {
        self.pool.get().await
    }
}

/// Builds the connection pool. Connections are opened lazily, so this succeeds while PostgreSQL is down.
pub fn connect_pool(config: &DatabaseConfig) -> Result<Database, ConnectError> {
    let (mut pg_config, verify_mode) = parse_url(&config.url)?;
    pg_config.connect_timeout(config.connect_timeout);
    let mut options = with_session_settings(pg_config.get_options());
    if let Some(timeout) = config.statement_timeout {
        options = with_statement_timeout(Some(&options), timeout);
    }
    pg_config.options(&options);
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("tracepost");
    }
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(config.ca_file.as_ref(), verify_mode)?);
    let manager = Manager::from_config(
        pg_config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .create_timeout(Some(config.connect_timeout))
        .wait_timeout(Some(config.connect_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|error| ConnectError::Pool(error.to_string()))?;
    Ok(Database { pool })
}

/// Settings every tracepost session runs with, whatever the server's defaults and whatever its statistics say:
/// no JIT (compiling a plan costs more than any of tracepost's queries runs) and no parallel plans (an
/// estimate made without statistics must not turn an index lookup into a parallel scan; tracepost's queries
/// are bounded index walks). Placed before the URL's own options, so an operator can still override them.
pub const SESSION_SETTINGS: &str = "-c jit=off -c max_parallel_workers_per_gather=0";

fn with_session_settings(options: Option<&str>) -> String {
    match options.map(str::trim).filter(|options| !options.is_empty()) {
        Some(options) => format!("{SESSION_SETTINGS} {options}"),
        None => SESSION_SETTINGS.to_owned(),
    }
}

/// The startup `options` with `-c statement_timeout=<ms>` added (after any the URL gave, so it wins), applied
/// by the server to every statement of the session. A timeout below a millisecond counts as one: 0 would mean
/// none.
fn with_statement_timeout(options: Option<&str>, timeout: Duration) -> String {
    let millis = timeout.as_millis().clamp(1, i32::MAX as u128);
    let setting = format!("-c statement_timeout={millis}");
    match options.map(str::trim).filter(|options| !options.is_empty()) {
        Some(options) => format!("{options} {setting}"),
        None => setting,
    }
}

/// Whether the URL itself asked for certificate verification (`sslmode=verify-ca` / `verify-full`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VerifyMode {
    AsConfigured,
    Required,
}

/// Parses the URL. tokio-postgres knows `disable`, `prefer` and `require`; libpq's `verify-ca` and
/// `verify-full` are mapped to `require` plus mandatory verification against `--database-ca-file`.
fn parse_url(url: &str) -> Result<(tokio_postgres::Config, VerifyMode), ConnectError> {
    let mut verify_mode = VerifyMode::AsConfigured;
    let mut rewritten = url.to_owned();
    for strict in ["sslmode=verify-full", "sslmode=verify-ca"] {
        if rewritten.contains(strict) {
            rewritten = rewritten.replace(strict, "sslmode=require");
            verify_mode = VerifyMode::Required;
        }
    }
    let config =
        tokio_postgres::Config::from_str(&rewritten).map_err(|error| ConnectError::InvalidUrl(format!("{error}")))?;
    if verify_mode == VerifyMode::Required && config.get_ssl_mode() == SslMode::Disable {
        return Err(ConnectError::InvalidUrl("conflicting sslmode values".into()));
    }
    Ok((config, verify_mode))
}

fn tls_config(ca_file: Option<&PathBuf>, verify_mode: VerifyMode) -> Result<ClientConfig, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| ConnectError::Pool(error.to_string()))?;
    let config = match ca_file {
        Some(path) => {
            let ca_error = |reason: String| ConnectError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(path).map_err(|error| ca_error(error.to_string()))? {
                let certificate = certificate.map_err(|error| ca_error(error.to_string()))?;
                roots.add(certificate).map_err(|error| ca_error(error.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_error("no certificate found".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None if verify_mode == VerifyMode::Required => {
            return Err(ConnectError::InvalidUrl(
                "sslmode=verify-ca/verify-full needs --database-ca-file".into(),
            ))
        }
        // libpq's `prefer` and `require` encrypt without verifying the server's certificate.
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts any server certificate (as libpq's `sslmode=require` does) but still checks that the server holds
/// the certificate's private key, so the session is encrypted end to end.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, signature, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, signature, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_defaults_to_prefer_and_verify_modes_need_a_ca_file() {
        let (config, mode) = parse_url("postgres://u@h/db").expect("valid url");
        assert_eq!(config.get_ssl_mode(), SslMode::Prefer);
        assert_eq!(mode, VerifyMode::AsConfigured);
        let (config, mode) = parse_url("postgres://u@h/db?sslmode=verify-full").expect("valid url");
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(mode, VerifyMode::Required);
        let error = tls_config(None, VerifyMode::Required).expect_err("no ca file");
        assert!(error.to_string().contains("--database-ca-file"), "{error}");
    }

    #[test]
    fn the_statement_timeout_is_a_startup_option_after_the_urls_own() {
        assert_eq!(
            DatabaseConfig::new("postgres://u@h/db").statement_timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            with_statement_timeout(None, Duration::from_secs(10)),
            "-c statement_timeout=10000"
        );
        assert_eq!(
            with_statement_timeout(Some("-c search_path=tp"), Duration::from_micros(10)),
            "-c search_path=tp -c statement_timeout=1"
        );
    }

    #[test]
    fn sessions_turn_jit_and_parallel_plans_off_before_the_urls_own_options() {
        assert_eq!(
            with_session_settings(Some("-c search_path=tp")),
            "-c jit=off -c max_parallel_workers_per_gather=0 -c search_path=tp"
        );
        assert_eq!(with_session_settings(None), SESSION_SETTINGS);
    }

    #[test]
    fn a_bad_url_is_a_clear_error() {
        let error = parse_url("postgres://u@h/db?sslmode=sometimes").expect_err("bad sslmode");
        assert!(error.to_string().starts_with("invalid database url"), "{error}");
    }
}
