//! The CloudEvents Kafka protocol binding, without a Kafka client: a record
//! is (headers, value). Binary mode puts each attribute in a `ce_<name>`
//! header (plain UTF-8, not percent-encoded as HTTP headers are) and the
//! data in the value, `content-type` carrying `datacontenttype`; structured
//! mode is the JSON event with `content-type: application/cloudevents+json`.
//! Shared by the Kafka broker class (spate-log), KafkaSink and KafkaSource.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{CloudEvent, CodecError, http_codec, json};

/// A record's headers, as Kafka carries them.
pub type Headers = Vec<(String, Vec<u8>)>;

/// The headers and value of `ev` in binary content mode.
pub fn encode_binary(ev: &CloudEvent) -> (Headers, Bytes) {
    let mut http_headers = HeaderMap::new();
    let body = http_codec::encode_binary(ev, &mut http_headers);
    let mut headers = Vec::with_capacity(http_headers.len());
    for (name, value) in &http_headers {
        let n = name.as_str();
        let key = match n.strip_prefix("ce-") {
            Some(attr) => format!("ce_{attr}"),
            None if n == "content-type" => n.to_string(),
            None => continue,
        };
        let v = crate::percent::decode(value.as_bytes())
            .unwrap_or_else(|_| String::from_utf8_lossy(value.as_bytes()).into_owned());
        headers.push((key, v.into_bytes()));
    }
    (headers, body)
}

/// The headers and value of `ev` in structured content mode.
pub fn encode_structured(ev: &CloudEvent) -> (Headers, Bytes) {
    let mut http_headers = HeaderMap::new();
    let body = http_codec::encode_structured(ev, &mut http_headers);
    (vec![("content-type".into(), b"application/cloudevents+json".to_vec())], body)
}

/// How a record carries a CloudEvent, if it does.
pub fn mode(headers: &[(String, Vec<u8>)]) -> Option<crate::ContentMode> {
    if headers.iter().any(|(k, _)| k == "ce_specversion") {
        return Some(crate::ContentMode::Binary);
    }
    let ct = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type"))?;
    std::str::from_utf8(&ct.1)
        .ok()
        .filter(|ct| ct.starts_with("application/cloudevents+json"))
        .map(|_| crate::ContentMode::Structured)
}

/// The CloudEvent a record carries in either mode; `Ok(None)` when it carries
/// none (no `ce_specversion` header, not structured).
pub fn decode(headers: &[(String, Vec<u8>)], value: Bytes) -> Result<Option<CloudEvent>, CodecError> {
    match mode(headers) {
        Some(crate::ContentMode::Binary) => {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                let Ok(v) = std::str::from_utf8(v) else { continue };
                let (name, value) = if let Some(attr) = k.strip_prefix("ce_") {
                    // The HTTP decoder expects percent-encoded values.
                    (format!("ce-{attr}"), crate::percent::encode(v).into_owned())
                } else if k.eq_ignore_ascii_case("content-type") {
                    ("content-type".to_string(), v.to_string())
                } else {
                    continue;
                };
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
                    h.insert(n, v);
                }
            }
            http_codec::decode_binary(&h, value).map(Some)
        }
        Some(_) => json::decode_event_bytes(&value).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExtValue;

    #[test]
    fn binary_round_trip_keeps_attributes_extensions_and_data() {
        let mut ev = CloudEvent::new("id 1", "/src", "t.x");
        ev.subject = Some("ünï code".into());
        ev.datacontenttype = Some("text/plain".into());
        ev.data = Some(Bytes::from_static(b"payload"));
        ev.set_extension("partitionkey", ExtValue::String("stream-7".into()));
        let (headers, value) = encode_binary(&ev);
        assert!(headers.iter().any(|(k, v)| k == "ce_subject" && v == "ünï code".as_bytes()), "plain UTF-8");
        assert!(headers.iter().any(|(k, v)| k == "content-type" && v == b"text/plain"));
        let back = decode(&headers, value).unwrap().unwrap();
        assert_eq!((back.id.as_str(), back.subject.as_deref()), ("id 1", Some("ünï code")));
        assert_eq!(back.data.as_deref(), Some(&b"payload"[..]));
        assert_eq!(back.extension("partitionkey"), Some(&ExtValue::String("stream-7".into())));
    }

    #[test]
    fn structured_round_trip_and_plain_records() {
        let ev = CloudEvent::new("2", "/s", "t");
        let (headers, value) = encode_structured(&ev);
        assert_eq!(decode(&headers, value).unwrap().unwrap().id, "2");
        assert!(decode(&[], Bytes::from_static(b"plain")).unwrap().is_none());
        let bad = vec![("ce_specversion".to_string(), b"1.0".to_vec())];
        assert!(decode(&bad, Bytes::new()).is_err(), "ce_ headers without id/source/type are refused");
    }
}
