//! CloudEvents HTTP protocol binding: binary, structured and batched modes.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::error::CodecError;
use crate::event::{CloudEvent, ExtValue, SpecVersion};
use crate::json;
use crate::percent;
use crate::rules;

/// How an event travelled over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    Binary,
    Structured,
    Batch,
}

/// The events of one HTTP request and the mode they came in.
#[derive(Debug)]
pub struct Decoded {
    pub mode: ContentMode,
    pub events: Vec<CloudEvent>,
}

const STRUCTURED_JSON: &str = "application/cloudevents+json";
const BATCH_JSON: &str = "application/cloudevents-batch+json";

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn essence(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// Detects the content mode. Batch is checked first because its media type
/// shares the structured prefix.
pub fn content_mode(headers: &HeaderMap) -> Result<ContentMode, CodecError> {
    let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").trim();
    if starts_with_ci(ct, "application/cloudevents-batch") {
        return if essence(ct).eq_ignore_ascii_case(BATCH_JSON) {
            Ok(ContentMode::Batch)
        } else {
            Err(CodecError::UnsupportedFormat(essence(ct).to_string()))
        };
    }
    if starts_with_ci(ct, "application/cloudevents") {
        return if essence(ct).eq_ignore_ascii_case(STRUCTURED_JSON) {
            Ok(ContentMode::Structured)
        } else {
            Err(CodecError::UnsupportedFormat(essence(ct).to_string()))
        };
    }
    Ok(ContentMode::Binary)
}

/// Decodes an HTTP request's headers and body into events.
pub fn decode(headers: &HeaderMap, body: Bytes) -> Result<Decoded, CodecError> {
    let mode = content_mode(headers)?;
    let events = match mode {
        ContentMode::Structured => vec![json::decode_event_bytes(&body)?],
        ContentMode::Batch => json::decode_batch_bytes(&body)?,
        ContentMode::Binary => vec![decode_binary(headers, body)?],
    };
    Ok(Decoded { mode, events })
}

fn header_value(name: &str, v: &HeaderValue) -> Result<String, CodecError> {
    let mut raw = v.as_bytes();
    // Unquote a value sent as an HTTP quoted-string, then percent-decode once.
    if raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"' {
        raw = &raw[1..raw.len() - 1];
    }
    percent::decode(raw).map_err(|e| CodecError::InvalidHeader {
        header: name.to_string(),
        reason: match e {
            percent::DecodeError::BadEscape(at) => {
                format!("invalid percent-encoding at byte {at}: '%' must be followed by two hex digits")
            }
            percent::DecodeError::NotUtf8 => "percent-decoded value is not valid UTF-8".to_string(),
        },
    })
}

/// Decodes binary mode: attributes in `ce-` headers, data in the body.
pub fn decode_binary(headers: &HeaderMap, body: Bytes) -> Result<CloudEvent, CodecError> {
    let Some(svh) = headers.get("ce-specversion") else {
        return Err(CodecError::NotACloudEvent);
    };
    let sv_str = header_value("ce-specversion", svh)?;
    if sv_str.is_empty() {
        return Err(CodecError::EmptyAttribute("specversion"));
    }
    let sv = SpecVersion::parse(&sv_str)?;
    let mut ev = CloudEvent::new("", "", "");
    ev.specversion = sv;
    let (mut id, mut source, mut ty) = (None, None, None);
    for name in headers.keys() {
        let hn = name.as_str();
        let Some(attr) = hn.strip_prefix("ce-") else {
            continue;
        };
        let mut values = headers.get_all(name).iter();
        let v = values.next().expect("a key has a value");
        if values.next().is_some() {
            return Err(CodecError::DuplicateHeader(hn.to_string()));
        }
        rules::check_attribute_name(attr)?;
        let value = header_value(hn, v)?;
        match attr {
            "specversion" => {}
            "id" => id = Some(value),
            "source" => source = Some(value),
            "type" => ty = Some(value),
            "datacontenttype" => return Err(CodecError::DataContentTypeHeader),
            "subject" => ev.subject = Some(value),
            "time" => ev.time = Some(value),
            a if a == sv.schema_attr() => ev.dataschema = Some(value),
            _ => {
                ev.extensions.insert(attr.to_string(), ExtValue::String(value));
            }
        }
    }
    ev.id = id.ok_or(CodecError::MissingAttribute("id"))?;
    ev.source = source.ok_or(CodecError::MissingAttribute("source"))?;
    ev.ty = ty.ok_or(CodecError::MissingAttribute("type"))?;
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().map_err(|_| CodecError::InvalidHeader {
            header: "content-type".into(),
            reason: "not visible ASCII".into(),
        })?;
        if !ct.is_empty() {
            ev.datacontenttype = Some(ct.to_string());
        }
    }
    if !body.is_empty() {
        ev.data = Some(body);
    }
    ev.validate()?;
    Ok(ev)
}

fn value(v: &str) -> HeaderValue {
    HeaderValue::from_str(&percent::encode(v)).expect("percent-encoded values are visible ASCII")
}

/// An extension's header (`ce-<name>`; the name was validated when the event was made).
fn put(headers: &mut HeaderMap, name: &str, v: &str) {
    // `ce-<name>` assembled on the stack for names of usual length (no formatting per event).
    let mut buf = [0u8; 64];
    let n = match buf.get_mut(..3 + name.len()) {
        Some(to) => {
            to[..3].copy_from_slice(b"ce-");
            to[3..].copy_from_slice(name.as_bytes());
            HeaderName::from_bytes(to)
        }
        None => HeaderName::from_bytes(format!("ce-{name}").as_bytes()),
    };
    headers.insert(n.expect("attribute names are valid header names"), value(v));
}

/// Encodes binary mode into `headers` and returns the body. The context
/// attributes' header names are static (no allocation per event).
pub fn encode_binary(ev: &CloudEvent, headers: &mut HeaderMap) -> Bytes {
    headers.insert(HeaderName::from_static("ce-specversion"), HeaderValue::from_static(ev.specversion.as_str()));
    headers.insert(HeaderName::from_static("ce-id"), value(&ev.id));
    headers.insert(HeaderName::from_static("ce-source"), value(&ev.source));
    headers.insert(HeaderName::from_static("ce-type"), value(&ev.ty));
    if let Some(s) = &ev.subject {
        headers.insert(HeaderName::from_static("ce-subject"), value(s));
    }
    if let Some(t) = &ev.time {
        headers.insert(HeaderName::from_static("ce-time"), value(t));
    }
    if let Some(s) = &ev.dataschema {
        put(headers, ev.specversion.schema_attr(), s);
    }
    for (name, v) in &ev.extensions {
        put(headers, name, &v.to_canonical());
    }
    if let Some(ct) = &ev.datacontenttype
        && let Ok(v) = HeaderValue::from_str(ct)
    {
        headers.insert(CONTENT_TYPE, v);
    }
    ev.data.clone().unwrap_or_default()
}

/// Encodes structured mode into `headers` and returns the body.
pub fn encode_structured(ev: &CloudEvent, headers: &mut HeaderMap) -> Bytes {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/cloudevents+json; charset=utf-8"));
    Bytes::from(json::encode_event(ev))
}

/// Encodes a batch into `headers` and returns the body.
pub fn encode_batch(events: &[CloudEvent], headers: &mut HeaderMap) -> Bytes {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/cloudevents-batch+json; charset=utf-8"));
    Bytes::from(json::encode_batch(events))
}

/// Entry point shared by the cargo-fuzz target and the in-tree mutation test:
/// the first byte picks the mode, the rest is used as body and header value.
pub fn decode_fuzz_input(input: &[u8]) {
    let (mode, rest) = input.split_first().unwrap_or((&0, &[]));
    let mut h = HeaderMap::new();
    match mode % 3 {
        0 => {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(STRUCTURED_JSON));
        }
        1 => {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(BATCH_JSON));
        }
        _ => {
            h.insert("ce-specversion", HeaderValue::from_static("1.0"));
            h.insert("ce-id", HeaderValue::from_static("1"));
            h.insert("ce-type", HeaderValue::from_static("t"));
            if let Ok(v) = HeaderValue::from_bytes(rest) {
                h.insert("ce-source", v);
            }
        }
    }
    let _ = decode(&h, Bytes::copy_from_slice(rest));
}
