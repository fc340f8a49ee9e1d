//! CloudEvents JSON event format (structured and batched modes).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::error::CodecError;
use crate::event::{CloudEvent, ExtValue, SpecVersion, is_context_attribute};
use crate::json_members::{Batch, Members};
use crate::rules;

/// Whether a media type carries JSON (`application/json`, `text/json`, `*/*+json`).
pub fn is_json_media_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json")
}

fn json_err(e: serde_json::Error) -> CodecError {
    CodecError::Json(e.to_string())
}

fn string_member(name: &str, raw: &RawValue) -> Result<Option<String>, CodecError> {
    let text = raw.get();
    // A string without escapes is its text between the quotes (the parser
    // already refused control characters and invalid UTF-8 in it).
    if text.len() >= 2 && text.starts_with('"') && !text.contains('\\') {
        return Ok(Some(text[1..text.len() - 1].to_owned()));
    }
    let v: serde_json::Value = serde_json::from_str(text).map_err(json_err)?;
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        other => Err(CodecError::value(name, format!("must be a JSON string, got {}", kind(&other)))),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn extension_value(name: &str, raw: &RawValue) -> Result<Option<ExtValue>, CodecError> {
    let v: serde_json::Value = serde_json::from_str(raw.get()).map_err(json_err)?;
    Ok(Some(match v {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::String(s) => ExtValue::String(s),
        serde_json::Value::Bool(b) => ExtValue::Boolean(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => ExtValue::Integer(i32::try_from(i).map_err(|_| {
                CodecError::value(name, format!("{i} is outside the 32-bit Integer range CloudEvents allows"))
            })?),
            None => {
                return Err(CodecError::value(
                    name,
                    format!("{n} is not an Integer; CloudEvents has no floating-point type (send it as a string)"),
                ));
            }
        },
        other => {
            return Err(CodecError::value(
                name,
                format!("extension values must be a string, integer or boolean, got {}", kind(&other)),
            ));
        }
    }))
}

/// Decodes one structured-mode JSON object.
pub fn decode_event(body: &[u8]) -> Result<CloudEvent, CodecError> {
    let members: Members<'_> = serde_json::from_slice(body).map_err(json_err)?;
    decode_members(members, None)
}

/// [`decode_event`] of a body held in `Bytes`: JSON data is a slice of the body, not a copy.
pub fn decode_event_bytes(body: &Bytes) -> Result<CloudEvent, CodecError> {
    let members: Members<'_> = serde_json::from_slice(body).map_err(json_err)?;
    decode_members(members, Some(body))
}

/// `src`: the buffer `m` borrows from, when JSON data may be sliced out of it.
fn decode_members(mut m: Members<'_>, src: Option<&Bytes>) -> Result<CloudEvent, CodecError> {
    let sv = match m.take("specversion") {
        None => return Err(CodecError::MissingAttribute("specversion")),
        Some(raw) => match string_member("specversion", raw)? {
            None => return Err(CodecError::MissingAttribute("specversion")),
            Some(s) if s.is_empty() => return Err(CodecError::EmptyAttribute("specversion")),
            Some(s) => SpecVersion::parse(&s)?,
        },
    };
    let mut take = |name: &'static str| -> Result<Option<String>, CodecError> {
        match m.take(name) {
            None => Ok(None),
            Some(raw) => string_member(name, raw),
        }
    };
    let required = |v: Option<String>, name: &'static str| v.ok_or(CodecError::MissingAttribute(name));
    let id = required(take("id")?, "id")?;
    let source = required(take("source")?, "source")?;
    let ty = required(take("type")?, "type")?;
    let datacontenttype = take("datacontenttype")?;
    let subject = take("subject")?;
    let time = take("time")?;
    let dataschema = take(sv.schema_attr())?;
    let encoding = if sv == SpecVersion::V03 { take("datacontentencoding")? } else { None };
    let data_raw = m.take("data").filter(|r| r.get() != "null");
    let data_b64 = if sv == SpecVersion::V10 { m.take("data_base64").filter(|r| r.get() != "null") } else { None };

    let data = match (data_raw, data_b64) {
        (Some(_), Some(_)) => return Err(CodecError::DataAndDataBase64),
        (None, Some(raw)) => {
            let s = string_member("data_base64", raw)?.unwrap_or_default();
            Some(Bytes::from(B64.decode(s.trim()).map_err(|e| CodecError::Base64(e.to_string()))?))
        }
        (Some(raw), None) => Some(decode_data(raw, datacontenttype.as_deref(), encoding.as_deref(), src)?),
        (None, None) => None,
    };

    let mut extensions = BTreeMap::new();
    for (name, raw) in m.into_rest() {
        rules::check_attribute_name(&name)?;
        if let Some(v) = extension_value(&name, raw)? {
            extensions.insert(name.into_owned(), v);
        }
    }
    let ev =
        CloudEvent { specversion: sv, id, source, ty, datacontenttype, dataschema, subject, time, extensions, data };
    ev.validate()?;
    Ok(ev)
}

fn decode_data(
    raw: &RawValue,
    ct: Option<&str>,
    encoding: Option<&str>,
    src: Option<&Bytes>,
) -> Result<Bytes, CodecError> {
    if let Some(enc) = encoding {
        if !enc.eq_ignore_ascii_case("base64") {
            return Err(CodecError::value("datacontentencoding", format!("'{enc}' is not supported (only base64)")));
        }
        let s = string_member("data", raw)?.unwrap_or_default();
        return Ok(Bytes::from(B64.decode(s.trim()).map_err(|e| CodecError::Base64(e.to_string()))?));
    }
    let text = raw.get();
    let json_ct = ct.is_none_or(is_json_media_type);
    if !json_ct && text.starts_with('"') {
        // Non-JSON content carried as a JSON string: the data is the string itself.
        let s: String = serde_json::from_str(text).map_err(json_err)?;
        return Ok(Bytes::from(s));
    }
    Ok(match src {
        Some(src) => src.slice_ref(text.as_bytes()),
        None => Bytes::copy_from_slice(text.as_bytes()),
    })
}

/// Decodes a batch (JSON array of structured events).
pub fn decode_batch(body: &[u8]) -> Result<Vec<CloudEvent>, CodecError> {
    decode_batch_in(body, None)
}

/// [`decode_batch`] of a body held in `Bytes`: JSON data is a slice of the body, not a copy.
pub fn decode_batch_bytes(body: &Bytes) -> Result<Vec<CloudEvent>, CodecError> {
    decode_batch_in(body, Some(body))
}

fn decode_batch_in(body: &[u8], src: Option<&Bytes>) -> Result<Vec<CloudEvent>, CodecError> {
    let element =
        |(index, m)| decode_members(m, src).map_err(|e| CodecError::BatchElement { index, source: Box::new(e) });
    // One pass over the array and its objects; if it is not an array of
    // objects, a second, slower one says where it went wrong.
    if let Ok(Batch(items)) = serde_json::from_slice::<Batch<'_>>(body) {
        return items.into_iter().enumerate().map(element).collect();
    }
    let items: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| CodecError::Batch(format!("not a JSON array of events: {e}")))?;
    items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let m: Members<'_> = serde_json::from_str(raw.get())
                .map_err(|e| CodecError::BatchElement { index, source: Box::new(json_err(e)) })?;
            element((index, m))
        })
        .collect()
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn push_member(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b',');
    push_str(out, name);
    out.push(b':');
    push_str(out, value);
}

/// Encodes one event as a structured-mode JSON object.
pub fn encode_event(ev: &CloudEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + ev.data.as_ref().map_or(0, |d| d.len() * 4 / 3));
    encode_into(&mut out, ev);
    out
}

/// Encodes a batch as a JSON array.
pub fn encode_batch(events: &[CloudEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * events.len());
    out.push(b'[');
    for (i, ev) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_into(&mut out, ev);
    }
    out.push(b']');
    out
}

fn encode_into(out: &mut Vec<u8>, ev: &CloudEvent) {
    out.extend_from_slice(b"{\"specversion\":");
    push_str(out, ev.specversion.as_str());
    push_member(out, "id", &ev.id);
    push_member(out, "source", &ev.source);
    push_member(out, "type", &ev.ty);
    for (name, v) in [
        ("datacontenttype", &ev.datacontenttype),
        (ev.specversion.schema_attr(), &ev.dataschema),
        ("subject", &ev.subject),
        ("time", &ev.time),
    ] {
        if let Some(v) = v {
            push_member(out, name, v);
        }
    }
    for (name, v) in &ev.extensions {
        if is_context_attribute(ev.specversion, name) {
            continue;
        }
        out.push(b',');
        push_str(out, name);
        out.push(b':');
        match v {
            ExtValue::String(s) => push_str(out, s),
            ExtValue::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
            ExtValue::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        }
    }
    if let Some(data) = &ev.data {
        let json_ct = ev.datacontenttype.as_deref().is_none_or(is_json_media_type);
        if json_ct && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(trim_ascii(data));
        } else if let Some(s) = std::str::from_utf8(data).ok().filter(|s| !json_ct && is_text(s)) {
            out.extend_from_slice(b",\"data\":");
            push_str(out, s);
        } else if ev.specversion == SpecVersion::V03 {
            push_member(out, "datacontentencoding", "base64");
            push_member(out, "data", &B64.encode(data));
        } else {
            push_member(out, "data_base64", &B64.encode(data));
        }
    }
    out.push(b'}');
}

/// Text that can travel as a JSON string: UTF-8 without control characters
/// other than tab and line breaks.
fn is_text(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":{"k":[1,2]},"ext1":"x"}"#;
    const B: &str = r#"{"specversion":"0.3","id":"b","source":"/s","type":"t","schemaurl":"s","datacontentencoding":"base64","data":"aGk="}"#;

    #[test]
    fn a_batch_read_in_one_pass_equals_its_elements_read_one_by_one() {
        let body = Bytes::from(format!("[{A},{B}]"));
        let one_pass = decode_batch_bytes(&body).unwrap();
        assert_eq!(one_pass, vec![decode_event(A.as_bytes()).unwrap(), decode_event(B.as_bytes()).unwrap()]);
        assert_eq!(one_pass, decode_batch(&body).unwrap());
        assert_eq!(one_pass[0].data.as_deref(), Some(&br#"{"k":[1,2]}"#[..]));
        assert_eq!(one_pass[1].data.as_deref(), Some(&b"hi"[..]));
        assert_eq!(one_pass[1].dataschema.as_deref(), Some("s"), "0.3 takes schemaurl by name");
    }

    #[test]
    fn json_data_is_a_slice_of_the_body_not_a_copy() {
        let body = Bytes::from(A);
        let ev = decode_event_bytes(&body).unwrap();
        let data = ev.data.unwrap();
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(data.as_ptr() as usize)), "the data points into the body");
    }

    #[test]
    fn a_bad_batch_element_is_named_by_its_index_and_a_non_array_says_so() {
        let err = |body: &str| decode_batch_bytes(&Bytes::from(body.to_string())).unwrap_err().to_string();
        let e = err(&format!("[{A},7]"));
        assert!(e.contains("element 1") || e.contains("1:"), "{e}");
        assert!(e.contains("expected a map"), "{e}");
        let e = err(&format!("[{A},{{\"specversion\":\"1.0\",\"source\":\"/s\",\"type\":\"t\"}}]"));
        assert!(e.contains("1") && e.contains("'id'"), "{e}");
        assert!(err("{}").contains("not a JSON array of events"), "{}", err("{}"));
    }

    #[test]
    fn names_with_escapes_and_repeated_names_read_as_a_map_would() {
        // "\u0069d" is "id"; of two "type" members the last wins, as in a map.
        let ev = decode_event(
            br#"{"specversion":"1.0","\u0069d":"e","source":"/s","type":"first","type":"last","x\u0031":"\u0041"}"#,
        )
        .unwrap();
        assert_eq!((ev.id.as_str(), ev.ty.as_str()), ("e", "last"));
        assert_eq!(ev.extensions.get("x1"), Some(&ExtValue::String("A".into())));
        // A 1.0 event's "schemaurl" is an extension; a 0.3 event's "dataschema" too.
        let ev = decode_event(br#"{"specversion":"1.0","id":"e","source":"/s","type":"t","schemaurl":"u"}"#).unwrap();
        assert_eq!(ev.extensions.get("schemaurl"), Some(&ExtValue::String("u".into())));
        let ev = decode_event(br#"{"specversion":"0.3","id":"e","source":"/s","type":"t","dataschema":"u"}"#).unwrap();
        assert_eq!((ev.dataschema, ev.extensions.get("dataschema")), (None, Some(&ExtValue::String("u".into()))));
    }
}
