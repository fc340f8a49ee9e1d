//! The CESQL v1.0 TCK from `../shared/conformance/cesql/`: every case must give
//! the expected value (with its type) and the expected error kind, or none.

use std::path::PathBuf;

use serde_json::Value as Json;
use spate_core::{CloudEvent, ExtValue};
use spate_filter::cesql::{ErrorKind, Expression, Value};

fn tck_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SPATE_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"))
        .join("cesql");
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var_os("CI").is_some() {
        panic!("CESQL TCK not found at {}", dir.display());
    } else {
        eprintln!("skipping: CESQL TCK not found at {}", dir.display());
        None
    }
}

fn scalar_string(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn set(ev: &mut CloudEvent, k: &str, v: &Json) {
    match (k, v) {
        ("specversion", _) => {}
        ("id", v) => ev.id = scalar_string(v),
        ("source", v) => ev.source = scalar_string(v),
        ("type", v) => ev.ty = scalar_string(v),
        ("subject", v) => ev.subject = Some(scalar_string(v)),
        ("time", v) => ev.time = Some(scalar_string(v)),
        ("datacontenttype", v) => ev.datacontenttype = Some(scalar_string(v)),
        ("dataschema", v) => ev.dataschema = Some(scalar_string(v)),
        (k, Json::Bool(b)) => ev.set_extension(k, ExtValue::Boolean(*b)),
        (k, Json::Number(n)) => ev.set_extension(k, ExtValue::Integer(n.as_i64().expect("integer") as i32)),
        (k, v) => ev.set_extension(k, ExtValue::String(scalar_string(v))),
    }
}

fn event_for(case: &Json) -> CloudEvent {
    let mut ev = CloudEvent::new("tck-id", "/tck/source", "tck.type");
    if let Some(e) = case.get("event").and_then(Json::as_object) {
        ev.source.clear();
        ev.id.clear();
        ev.ty.clear();
        for (k, v) in e {
            set(&mut ev, k, v);
        }
    }
    if let Some(o) = case.get("eventOverrides").and_then(Json::as_object) {
        for (k, v) in o {
            set(&mut ev, k, v);
        }
    }
    ev
}

fn kind(s: &str) -> ErrorKind {
    match s {
        "parse" => ErrorKind::Parse,
        "math" => ErrorKind::Math,
        "cast" => ErrorKind::Cast,
        "missingAttribute" => ErrorKind::MissingAttribute,
        "missingFunction" => ErrorKind::MissingFunction,
        "functionEvaluation" => ErrorKind::FunctionEvaluation,
        "generic" => ErrorKind::Generic,
        other => panic!("unknown error kind {other}"),
    }
}

fn expected(v: &Json) -> Value {
    match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Int(n.as_i64().expect("integer result") as i32),
        Json::String(s) => Value::Str(s.clone()),
        other => panic!("unexpected result {other}"),
    }
}

#[test]
fn cesql_tck_passes_every_case() {
    let Some(dir) = tck_dir() else { return };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let (mut total, mut failures) = (0, vec![]);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let doc: Json = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for case in doc["tests"].as_array().expect("tests list") {
            total += 1;
            let name =
                format!("{} / {}", f.file_name().unwrap().to_string_lossy(), case["name"].as_str().unwrap_or("?"));
            let expr = scalar_string(&case["expression"]);
            let want_err = case.get("error").and_then(Json::as_str).map(kind);
            let parsed = Expression::parse(&expr);
            let problem = match (parsed, want_err) {
                (Err(_), Some(ErrorKind::Parse)) => None,
                (Err(e), _) => Some(format!("parse error {e}")),
                (Ok(_), Some(ErrorKind::Parse)) => Some("expected a parse error".to_string()),
                (Ok(x), want_err) => {
                    let got = x.evaluate(&event_for(case));
                    let mut p = None;
                    if let Some(r) = case.get("result") {
                        let want = expected(r);
                        if got.value != want {
                            p = Some(format!("value {:?}, want {want:?}", got.value));
                        }
                    }
                    match want_err {
                        None if !got.errors.is_empty() => p = Some(format!("unexpected errors {:?}", got.errors)),
                        Some(k) if !got.errors.contains(&k) => p = Some(format!("errors {:?}, want {k:?}", got.errors)),
                        _ => {}
                    }
                    p
                }
            };
            if let Some(p) = problem {
                failures.push(format!("{name}: `{expr}`: {p}"));
            }
        }
    }
    println!("CESQL TCK: {}/{total} passed", total - failures.len());
    assert!(failures.is_empty(), "{} of {total} TCK cases failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(total, 275, "the TCK has 275 cases");
}
