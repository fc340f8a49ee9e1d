use thiserror::Error;

/// Why an incoming event was rejected. Every message names the attribute,
/// header or member at fault and says what a valid value looks like.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("missing required attribute '{0}'")]
    MissingAttribute(&'static str),
    #[error("required attribute '{0}' is empty")]
    EmptyAttribute(&'static str),
    #[error("unsupported specversion '{0}' (supported: 1.0, 0.3)")]
    UnsupportedSpecVersion(String),
    #[error("invalid attribute name '{0}': names use only lowercase letters a-z and digits 0-9")]
    InvalidAttributeName(String),
    #[error("attribute '{name}': {reason}")]
    InvalidAttributeValue { name: String, reason: String },
    #[error("header '{header}': {reason}")]
    InvalidHeader { header: String, reason: String },
    #[error("header '{0}' appears more than once")]
    DuplicateHeader(String),
    #[error("'ce-datacontenttype' is not allowed in binary mode: send the content type in the Content-Type header")]
    DataContentTypeHeader,
    #[error(
        "not a CloudEvent: no 'ce-specversion' header (binary mode) and Content-Type is not application/cloudevents+json (structured) or application/cloudevents-batch+json (batch)"
    )]
    NotACloudEvent,
    #[error("unsupported event format '{0}': only JSON (application/cloudevents+json) is supported")]
    UnsupportedFormat(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("'data' and 'data_base64' are mutually exclusive")]
    DataAndDataBase64,
    #[error("'data_base64' is not valid base64: {0}")]
    Base64(String),
    #[error("batch: {0}")]
    Batch(String),
    #[error("batch element {index}: {source}")]
    BatchElement { index: usize, source: Box<CodecError> },
    #[error(
        "the event has {count} extension attributes; at most {max} are accepted (in binary mode each is an HTTP header)"
    )]
    TooManyExtensions { count: usize, max: usize },
    #[error("stored record is corrupt: {0}")]
    Corrupt(&'static str),
}

impl CodecError {
    pub(crate) fn value(name: &str, reason: impl Into<String>) -> Self {
        CodecError::InvalidAttributeValue { name: name.to_string(), reason: reason.into() }
    }
}
