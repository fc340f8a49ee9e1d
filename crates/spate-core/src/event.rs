use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::CodecError;
use crate::rules;

/// Extension attributes one event may carry. CloudEvents sets no bound, but in
/// binary mode each is an HTTP header and receivers refuse long before this
/// (Go's net/http at 1 MB of headers, hyper at 100 headers).
pub const MAX_EXTENSIONS: usize = 1000;

/// CloudEvents spec versions Spate accepts. A 0.3 event stays 0.3 end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecVersion {
    V03,
    V10,
}

impl SpecVersion {
    pub fn parse(s: &str) -> Result<Self, CodecError> {
        match s {
            "1.0" => Ok(SpecVersion::V10),
            "0.3" => Ok(SpecVersion::V03),
            other => Err(CodecError::UnsupportedSpecVersion(other.to_string())),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V10 => "1.0",
            SpecVersion::V03 => "0.3",
        }
    }
    /// Name of the schema attribute: `dataschema` (1.0) or `schemaurl` (0.3).
    pub fn schema_attr(self) -> &'static str {
        match self {
            SpecVersion::V10 => "dataschema",
            SpecVersion::V03 => "schemaurl",
        }
    }
}

/// An extension attribute value. CloudEvents' Binary, URI, URI-reference and
/// Timestamp extension types travel as strings in every binding Spate speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtValue {
    String(String),
    Integer(i32),
    Boolean(bool),
}

impl ExtValue {
    /// Canonical string form (CloudEvents type system), used by filters and headers.
    pub fn to_canonical(&self) -> Cow<'_, str> {
        match self {
            ExtValue::String(s) => Cow::Borrowed(s),
            ExtValue::Integer(i) => Cow::Owned(i.to_string()),
            ExtValue::Boolean(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }
}

/// A validated CloudEvent. Construct it through the codec or [`CloudEvent::new`]
/// plus [`CloudEvent::validate`]; every field has already passed the rules in
/// [`crate::rules`] when it comes out of a decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    pub specversion: SpecVersion,
    pub id: String,
    pub source: String,
    pub ty: String,
    pub datacontenttype: Option<String>,
    /// `dataschema` in 1.0, `schemaurl` in 0.3.
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub extensions: BTreeMap<String, ExtValue>,
    pub data: Option<Bytes>,
}

/// Context attribute names that are not extensions, per spec version.
pub(crate) fn is_context_attribute(sv: SpecVersion, name: &str) -> bool {
    matches!(name, "specversion" | "id" | "source" | "type" | "datacontenttype" | "subject" | "time")
        || name == sv.schema_attr()
}

impl CloudEvent {
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        CloudEvent {
            specversion: SpecVersion::V10,
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            extensions: BTreeMap::new(),
            data: None,
        }
    }

    /// Value of any attribute (context attribute or extension) in canonical string form.
    pub fn attribute(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            "specversion" => Some(Cow::Borrowed(self.specversion.as_str())),
            "id" => Some(Cow::Borrowed(&self.id)),
            "source" => Some(Cow::Borrowed(&self.source)),
            "type" => Some(Cow::Borrowed(&self.ty)),
            "datacontenttype" => self.datacontenttype.as_deref().map(Cow::Borrowed),
            "subject" => self.subject.as_deref().map(Cow::Borrowed),
            "time" => self.time.as_deref().map(Cow::Borrowed),
            n if n == self.specversion.schema_attr() => self.dataschema.as_deref().map(Cow::Borrowed),
            n => self.extensions.get(n).map(ExtValue::to_canonical),
        }
    }

    pub fn extension(&self, name: &str) -> Option<&ExtValue> {
        self.extensions.get(name)
    }

    pub fn set_extension(&mut self, name: &str, value: ExtValue) {
        self.extensions.insert(name.to_string(), value);
    }

    /// Integer value of an extension that may have travelled as a string
    /// (binary mode carries every extension as a string).
    pub fn extension_i64(&self, name: &str) -> Option<i64> {
        match self.extensions.get(name)? {
            ExtValue::Integer(i) => Some(i64::from(*i)),
            ExtValue::String(s) => s.trim().parse().ok(),
            ExtValue::Boolean(_) => None,
        }
    }

    /// Checks every rule the decoders enforce. Decoders call it; so should code
    /// that builds events by hand before handing them to the data plane.
    pub fn validate(&self) -> Result<(), CodecError> {
        // Bounded: every extension becomes a header of each binary-mode delivery
        // (and an entry of its header map, which cannot hold tens of thousands).
        if self.extensions.len() > MAX_EXTENSIONS {
            return Err(CodecError::TooManyExtensions { count: self.extensions.len(), max: MAX_EXTENSIONS });
        }
        for (name, v) in [("id", &self.id), ("source", &self.source), ("type", &self.ty)] {
            if v.is_empty() {
                return Err(CodecError::EmptyAttribute(name));
            }
            rules::check_string(name, v)?;
        }
        rules::check_uri_reference("source", &self.source)?;
        if let Some(t) = &self.time {
            rules::check_string("time", t)?;
            rules::check_rfc3339("time", t)?;
        }
        if let Some(s) = &self.dataschema {
            let attr = self.specversion.schema_attr();
            rules::check_string(attr, s)?;
            match self.specversion {
                SpecVersion::V10 => rules::check_absolute_uri(attr, s)?,
                SpecVersion::V03 => rules::check_uri_reference(attr, s)?,
            }
        }
        if let Some(s) = &self.subject {
            rules::check_string("subject", s)?;
        }
        if let Some(s) = &self.datacontenttype {
            rules::check_string("datacontenttype", s)?;
            if s.is_empty() {
                return Err(CodecError::value("datacontenttype", "must not be empty when present"));
            }
        }
        for (name, v) in &self.extensions {
            rules::check_attribute_name(name)?;
            if is_context_attribute(self.specversion, name) {
                return Err(CodecError::value(name, "is a context attribute, not an extension"));
            }
            if let ExtValue::String(s) = v {
                rules::check_string(name, s)?;
            }
        }
        Ok(())
    }

    /// Attribute names longer than the 20 characters CloudEvents recommends.
    pub fn long_attribute_names(&self) -> impl Iterator<Item = &str> {
        self.extensions.keys().map(String::as_str).filter(|n| n.len() > 20)
    }
}
