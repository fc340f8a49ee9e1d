use std::fmt;

use thiserror::Error;

/// One problem in one document, located by its field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// 0-based document index within the file, when known.
    pub document: Option<usize>,
    /// `Kind namespace/name`, as far as it could be read.
    pub resource: String,
    /// Dotted path, e.g. `spec.filters[1].exact.type`.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(document: Option<usize>, resource: impl Into<String>, path: &str, message: impl Into<String>) -> Self {
        FieldError { document, resource: resource.into(), path: path.to_string(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = self.document {
            write!(f, "document {} ", d + 1)?;
        }
        write!(f, "({}): ", self.resource)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, Error)]
pub enum AdmissionError {
    #[error("not valid YAML: {0}")]
    Syntax(String),
    #[error("no resources in the input")]
    Empty,
    #[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
}
