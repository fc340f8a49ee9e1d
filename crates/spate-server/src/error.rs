//! Why `spate serve` could not start, or stopped: typed, each naming what it
//! was doing (the flag, the file, the address). A variant's message is what
//! was being done; its cause is its `source()`, so `main` prints the chain
//! (`doing: cause`) as one clear line.

/// A server that could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A flag or a manifest that is wrong; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error("{doing}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{doing}")]
    Storage {
        doing: String,
        #[source]
        source: spate_log::LogError,
    },
    #[error("{doing}")]
    Config {
        doing: String,
        #[source]
        source: spate_log::ConfigError,
    },
    #[error("loading stored resources")]
    Store(#[from] crate::store::StoreError),
    #[error("starting serving")]
    Serving(#[from] spate_serving::ServingError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    SecretKey(#[from] crate::sealed::KeyFileError),
    #[error(transparent)]
    AdminAuth(#[from] crate::admin_auth::AuthConfigError),
    #[error(transparent)]
    Oidc(#[from] crate::oidc::OidcError),
    #[error(transparent)]
    Manifests(#[from] spate_api::manifests::ReadError),
}

impl ServeError {
    pub(crate) fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
        let doing = doing.into();
        move |source| ServeError::Io { doing, source }
    }

    pub(crate) fn storage(doing: impl Into<String>) -> impl FnOnce(spate_log::LogError) -> ServeError {
        let doing = doing.into();
        move |source| ServeError::Storage { doing, source }
    }

    pub(crate) fn config(doing: impl Into<String>) -> impl FnOnce(spate_log::ConfigError) -> ServeError {
        let doing = doing.into();
        move |source| ServeError::Config { doing, source }
    }
}
