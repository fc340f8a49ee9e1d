//! One rejected input per codec rule, each with the reason a person can act on.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use spate_core::{CodecError, ContentMode, ExtValue, SpecVersion, http_codec};

fn binary(headers: &[(&str, &[u8])], body: &str) -> Result<http_codec::Decoded, CodecError> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_bytes(v).unwrap());
    }
    http_codec::decode(&h, Bytes::from(body.to_string()))
}

fn structured(body: &str) -> Result<http_codec::Decoded, CodecError> {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/cloudevents+json"));
    http_codec::decode(&h, Bytes::from(body.to_string()))
}

const OK_HEADERS: [(&str, &[u8]); 4] =
    [("ce-specversion", b"1.0"), ("ce-id", b"1"), ("ce-source", b"/s"), ("ce-type", b"t")];

fn with(extra: &[(&'static str, &'static [u8])], drop: &str) -> Vec<(&'static str, &'static [u8])> {
    OK_HEADERS.iter().copied().filter(|(k, _)| *k != drop).chain(extra.iter().copied()).collect()
}

fn err_text(r: Result<http_codec::Decoded, CodecError>) -> String {
    match r {
        Ok(d) => panic!("expected rejection, got {:?}", d.events),
        Err(e) => e.to_string(),
    }
}

#[test]
fn binary_valid_baseline() {
    let d = binary(&with(&[("content-type", b"text/plain"), ("ce-myext", b"v")], ""), "hi").unwrap();
    assert_eq!(d.mode, ContentMode::Binary);
    assert_eq!(d.events[0].datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(d.events[0].extension("myext"), Some(&ExtValue::String("v".into())));
}

#[test]
fn table_of_rejections() {
    let long = "a".repeat(21);
    let _ = long;
    let cases: Vec<(&str, Result<http_codec::Decoded, CodecError>, &str)> = vec![
        ("missing id (binary)", binary(&with(&[], "ce-id"), ""), "missing required attribute 'id'"),
        ("missing source (binary)", binary(&with(&[], "ce-source"), ""), "missing required attribute 'source'"),
        ("missing type (binary)", binary(&with(&[], "ce-type"), ""), "missing required attribute 'type'"),
        ("empty id (binary)", binary(&with(&[("ce-id", b"")], "ce-id"), ""), "required attribute 'id' is empty"),
        (
            "specversion 19.0",
            binary(&with(&[("ce-specversion", b"19.0")], "ce-specversion"), ""),
            "unsupported specversion '19.0'",
        ),
        ("no specversion", binary(&with(&[], "ce-specversion"), ""), "no 'ce-specversion' header"),
        ("bad attribute name", binary(&with(&[("ce-my_ext", b"x")], ""), ""), "invalid attribute name 'my_ext'"),
        ("bad percent-encoding", binary(&with(&[("ce-myext", b"100%zz")], ""), ""), "invalid percent-encoding"),
        ("truncated percent-encoding", binary(&with(&[("ce-myext", b"abc%4")], ""), ""), "invalid percent-encoding"),
        ("percent-decoded invalid UTF-8", binary(&with(&[("ce-myext", b"%C3%28")], ""), ""), "not valid UTF-8"),
        (
            "ce-datacontenttype in binary",
            binary(&with(&[("ce-datacontenttype", b"text/plain")], ""), ""),
            "not allowed in binary mode",
        ),
        ("duplicate ce- header", binary(&with(&[("ce-id", b"2")], ""), ""), "appears more than once"),
        ("control character", binary(&with(&[("ce-subject", b"a%0Ab")], ""), ""), "control character U+000A"),
        ("time not RFC 3339", binary(&with(&[("ce-time", b"yesterday")], ""), ""), "not an RFC 3339 timestamp"),
        (
            "source not a URI-reference",
            binary(&with(&[("ce-source", b"has%20space")], "ce-source"), ""),
            "not a URI-reference",
        ),
        ("dataschema not absolute", binary(&with(&[("ce-dataschema", b"/rel")], ""), ""), "not an absolute URI"),
        ("structured bad JSON", structured("{\"specversion\":"), "invalid JSON"),
        (
            "structured missing id",
            structured(r#"{"specversion":"1.0","source":"/s","type":"t"}"#),
            "missing required attribute 'id'",
        ),
        (
            "structured empty source",
            structured(r#"{"specversion":"1.0","id":"1","source":"","type":"t"}"#),
            "'source' is empty",
        ),
        (
            "structured non-string id",
            structured(r#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#),
            "must be a JSON string",
        ),
        (
            "data with data_base64",
            structured(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#),
            "mutually exclusive",
        ),
        (
            "bad base64",
            structured(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"!!"}"#),
            "not valid base64",
        ),
        (
            "integer over 32 bits",
            structured(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","big":2147483648}"#),
            "32-bit Integer",
        ),
        (
            "float extension",
            structured(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","f":1.5}"#),
            "no floating-point type",
        ),
        (
            "object extension",
            structured(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","o":{}}"#),
            "got an object",
        ),
        (
            "uppercase member",
            structured(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Ext":"x"}"#),
            "invalid attribute name 'Ext'",
        ),
        (
            "batch not array",
            {
                let mut h = HeaderMap::new();
                h.insert("content-type", HeaderValue::from_static("application/cloudevents-batch+json"));
                http_codec::decode(&h, Bytes::from_static(b"{}"))
            },
            "not a JSON array",
        ),
        (
            "batch element invalid",
            {
                let mut h = HeaderMap::new();
                h.insert("content-type", HeaderValue::from_static("APPLICATION/CLOUDEVENTS-BATCH+JSON"));
                http_codec::decode(
                    &h,
                    Bytes::from_static(
                        br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0"}]"#,
                    ),
                )
            },
            "batch element 1: missing required attribute 'id'",
        ),
        (
            "unsupported format",
            {
                let mut h = HeaderMap::new();
                h.insert("content-type", HeaderValue::from_static("application/cloudevents+avro"));
                http_codec::decode(&h, Bytes::new())
            },
            "unsupported event format",
        ),
    ];
    for (name, result, want) in cases {
        let got = err_text(result);
        assert!(got.contains(want), "{name}: got '{got}', want it to contain '{want}'");
    }
}

#[test]
fn percent_decoding_happens_exactly_once_and_quotes_are_removed() {
    let d = binary(&with(&[("ce-myext", b"%2541"), ("ce-quoted", b"\"a%20b\"")], ""), "").unwrap();
    assert_eq!(d.events[0].extension("myext"), Some(&ExtValue::String("%41".into())));
    assert_eq!(d.events[0].extension("quoted"), Some(&ExtValue::String("a b".into())));
}

#[test]
fn content_type_detection_is_case_insensitive_and_checks_batch_first() {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("Application/CloudEvents+JSON; charset=utf-8"));
    let d = http_codec::decode(&h, Bytes::from_static(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#))
        .unwrap();
    assert_eq!(d.mode, ContentMode::Structured);
    h.insert("content-type", HeaderValue::from_static("application/cloudevents-batch+json"));
    let d = http_codec::decode(&h, Bytes::from_static(b"[]")).unwrap();
    assert_eq!(d.mode, ContentMode::Batch);
    assert!(d.events.is_empty());
}

#[test]
fn v03_stays_v03_and_base64_encoding_decodes() {
    let d = structured(r#"{"specversion":"0.3","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","datacontentencoding":"base64","data":"AAEC","schemaurl":"/rel/ok"}"#).unwrap();
    let ev = &d.events[0];
    assert_eq!(ev.specversion, SpecVersion::V03);
    assert_eq!(ev.data.as_deref(), Some(&[0u8, 1, 2][..]));
    assert_eq!(ev.dataschema.as_deref(), Some("/rel/ok"));
    let mut h = HeaderMap::new();
    let body = http_codec::encode_structured(ev, &mut h);
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.contains(r#""specversion":"0.3""#) && text.contains(r#""datacontentencoding":"base64""#), "{text}");
    assert_eq!(&http_codec::decode(&h, body).unwrap().events[0], ev);
}

#[test]
fn binary_encoding_percent_encodes_and_types_extensions() {
    let mut ev = spate_core::CloudEvent::new("id 1", "/s", "t");
    ev.set_extension("n", ExtValue::Integer(-5));
    ev.set_extension("b", ExtValue::Boolean(true));
    ev.set_extension("s", ExtValue::String("€ \"x\" 100%".into()));
    let mut h = HeaderMap::new();
    http_codec::encode_binary(&ev, &mut h);
    assert_eq!(h["ce-id"], "id%201");
    assert_eq!(h["ce-n"], "-5");
    assert_eq!(h["ce-b"], "true");
    assert_eq!(h["ce-s"], "%E2%82%AC%20%22x%22%20100%25");
    let back = http_codec::decode(&h, Bytes::new()).unwrap().events.remove(0);
    assert_eq!(back.extension("s"), Some(&ExtValue::String("€ \"x\" 100%".into())));
    // Binary mode carries every extension as a string; the value is kept.
    assert_eq!(back.extension_i64("n"), Some(-5));
}

#[test]
fn long_attribute_names_are_reported_for_a_warning() {
    let d = binary(&with(&[("ce-averyveryverylongextensionname", b"x")], ""), "").unwrap();
    assert_eq!(d.events[0].long_attribute_names().collect::<Vec<_>>(), vec!["averyveryverylongextensionname"]);
}

/// Cheap, deterministic stand-in for the cargo-fuzz target (fuzz/), run on every
/// test pass: random mutations of valid requests must never panic the decoder.
#[test]
fn decoder_never_panics_on_mutated_input() {
    let seeds: [&[u8]; 3] = [
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":[1,2]},"x":5}"#,
        br#"[{"specversion":"0.3","id":"1","source":"/s","type":"t","datacontentencoding":"base64","data":"AA=="}]"#,
        b"%41%zz\"quoted\"",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let mut input = seeds[round % seeds.len()].to_vec();
        for _ in 0..(next() % 6) {
            let pos = (next() as usize) % (input.len() + 1);
            match next() % 3 {
                0 if pos < input.len() => input[pos] = next() as u8,
                1 => input.insert(pos, next() as u8),
                _ if pos < input.len() => {
                    input.remove(pos);
                }
                _ => {}
            }
        }
        spate_core::http_codec::decode_fuzz_input(&input);
    }
}

/// Extensions are bounded (each is a header of a binary-mode delivery): at the
/// bound an event is accepted, one past it is refused with the count and the bound.
#[test]
fn an_event_with_more_extensions_than_the_bound_is_refused_with_both_numbers() {
    let event = |n: usize| {
        let mut ev = serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        for i in 0..n {
            ev[format!("x{i}")] = serde_json::json!(1);
        }
        ev.to_string()
    };
    let max = spate_core::event::MAX_EXTENSIONS;
    assert_eq!(structured(&event(max)).unwrap().events[0].extensions.len(), max);
    let why = err_text(structured(&event(max + 1)));
    assert!(why.contains(&format!("{} extension attributes", max + 1)) && why.contains(&max.to_string()), "{why}");
    // In a batch the element is named too.
    let batch = format!("[{},{}]", event(1), event(max + 1));
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/cloudevents-batch+json"));
    let why = http_codec::decode(&h, Bytes::from(batch)).map(|d| d.events.len()).unwrap_err().to_string();
    assert!(why.contains("element 1") && why.contains("extension attributes"), "{why}");
}
