use thiserror::Error;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("log is full: the writer queue holds too many pending appends; retry shortly")]
    Full,
    #[error("log '{0}' is closed")]
    Closed(String),
    #[error("storage IO error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The engine (NATS) is not reachable or refused the operation; retry later.
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid log name '{0}': use letters, digits, '.', '-' and '_'")]
    InvalidName(String),
}

impl LogError {
    /// What went wrong without local details (paths): safe to show a sender.
    pub fn public_reason(&self) -> String {
        match self {
            LogError::Io { .. } if self.is_no_space() => "no space left on the storage device".into(),
            LogError::Io { source, .. } => format!("storage IO error ({})", source.kind()),
            LogError::Closed(_) => "the log is closed".into(),
            LogError::Unavailable(_) => "the event store (NATS) is unavailable".into(),
            other => other.to_string(),
        }
    }

    /// True when the error says the device is full (ENOSPC) or over quota (EDQUOT).
    pub fn is_no_space(&self) -> bool {
        use std::io::ErrorKind::{QuotaExceeded, StorageFull};
        matches!(self, LogError::Io { source, .. }
            if matches!(source.kind(), StorageFull | QuotaExceeded) || matches!(source.raw_os_error(), Some(28 | 122)))
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        LogError::Io { path: path.display().to_string(), source }
    }
}
