use thiserror::Error;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("log is full: the writer queue holds too many pending appends; retry shortly")]
    Full,
    #[error("log '{0}' is closed")]
    Closed(String),
    #[error("storage IO error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid log name '{0}': use letters, digits, '.', '-' and '_'")]
    InvalidName(String),
}

impl LogError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        LogError::Io { path: path.display().to_string(), source }
    }
}
