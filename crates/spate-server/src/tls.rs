//! TLS for the listeners (`--tls-cert/--tls-key`, `--admin-tls-cert/--admin-tls-key`):
//! rustls with the ring provider, HTTP/1.1, and the certificate reloaded
//! when its files change (checked every two seconds; a broken new pair is
//! logged and the previous one kept).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, server::ResolvesServerCert, sign::CertifiedKey};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    #[error("{path} holds no usable PEM private key: {reason}")]
    Key { path: String, reason: String },
    #[error("{0} and {1} must be given together")]
    Half(&'static str, &'static str),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A certificate and key pair on disk.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Both flags or neither.
    pub fn from_flags(
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        names: (&'static str, &'static str),
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (cert, key) {
            (Some(c), Some(k)) => Ok(Some(TlsFiles { cert: c.clone(), key: k.clone() })),
            (None, None) => Ok(None),
            _ => Err(TlsError::Half(names.0, names.1)),
        }
    }
}

/// The listener's current certificate, swapped when its files change.
#[derive(Debug)]
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

#[derive(Debug, Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The certificate file as read (PEM), for clients that must trust it.
    chain_pem: String,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("tls lock").key.clone())
    }
}

impl Reloading {
    pub async fn load(files: TlsFiles) -> Result<Arc<Reloading>, TlsError> {
        let loaded = load(&files).await?;
        Ok(Arc::new(Reloading { files, current: RwLock::new(loaded) }))
    }

    /// The certificate chain file's PEM (what a client of this listener may trust).
    pub fn chain_pem(&self) -> String {
        self.current.read().expect("tls lock").chain_pem.clone()
    }

    /// An acceptor that always serves the current certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Checks the files every two seconds and swaps in a changed, valid pair.
    pub fn watch(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let stamp = stamps(&self.files).await;
                if stamp == self.current.read().expect("tls lock").stamp {
                    continue;
                }
                match load(&self.files).await {
                    Ok(loaded) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        *self.current.write().expect("tls lock") = loaded;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the changed TLS certificate cannot be used; keeping the previous one");
                        self.current.write().expect("tls lock").stamp = stamp;
                    }
                }
            }
        })
    }
}

async fn stamps(files: &TlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: PathBuf| async move { tokio::fs::metadata(p).await.and_then(|m| m.modified()).ok() };
    (m(files.cert.clone()).await, m(files.key.clone()).await)
}

async fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path).await.map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

async fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let stamp = stamps(files).await;
    let (cert_pem, key_pem) = (read(&files.cert).await?, read(&files.key).await?);
    let cert_path = files.cert.display().to_string();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path));
    }
    let key_path = files.key.display().to_string();
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::Key { path: key_path.clone(), reason: e.to_string() })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Key { path: key_path, reason: e.to_string() })?;
    Ok(Loaded {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        chain_pem: String::from_utf8_lossy(&cert_pem).into_owned(),
        stamp,
    })
}
