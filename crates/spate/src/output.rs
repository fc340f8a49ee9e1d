//! Rendering of resources for `spate get`.

use serde_json::Value;
use spate_api::Kind;

use crate::cli::OutputFormat;

fn ready(v: &Value) -> (String, String) {
    let cond = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    match cond {
        None => ("Unknown".into(), String::new()),
        Some(c) => {
            (c["status"].as_str().unwrap_or("Unknown").to_string(), c["reason"].as_str().unwrap_or("").to_string())
        }
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

pub fn render(kind: Kind, items: &[Value], format: OutputFormat, single: bool) -> String {
    match format {
        OutputFormat::Json => {
            let v = if single {
                items[0].clone()
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
            };
            serde_json::to_string_pretty(&v).expect("JSON values serialize") + "\n"
        }
        OutputFormat::Yaml => {
            let v = if single {
                items[0].clone()
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
            };
            serde_saphyr::to_string(&v).unwrap_or_else(|e| format!("# cannot render YAML: {e}\n"))
        }
        OutputFormat::Table => {
            let mut rows: Vec<Vec<String>> = vec![header(kind).iter().map(ToString::to_string).collect()];
            rows.extend(items.iter().map(|it| row(kind, it)));
            table(rows, kind.plural())
        }
    }
}

/// The column names of `spate get <kind>`.
fn header(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::Broker => vec!["NAMESPACE", "NAME", "CLASS", "URL", "READY", "REASON"],
        Kind::Trigger => vec!["NAMESPACE", "NAME", "BROKER", "SUBSCRIBER_URI", "READY", "REASON"],
        Kind::Channel
        | Kind::InMemoryChannel
        | Kind::NatsJetStreamChannel
        | Kind::KafkaChannel
        | Kind::Sequence
        | Kind::Parallel => {
            vec!["NAMESPACE", "NAME", "URL", "READY", "REASON"]
        }
        Kind::Subscription => {
            vec!["NAMESPACE", "NAME", "CHANNEL", "SUBSCRIBER_URI", "REPLY_URI", "READY", "REASON"]
        }
        Kind::Service => vec!["NAMESPACE", "NAME", "URL", "LATESTCREATED", "LATESTREADY", "READY", "REASON"],
        Kind::Secret => vec!["NAMESPACE", "NAME", "TYPE", "KEYS"],
        Kind::ConfigMap => vec!["NAMESPACE", "NAME", "KEYS"],
        Kind::Namespace => vec!["NAME", "STATUS"],
        Kind::EventPolicy => vec!["NAMESPACE", "NAME", "FROM", "READY", "REASON"],
        Kind::EventType => vec!["NAMESPACE", "NAME", "TYPE", "SOURCE", "REFERENCE", "READY"],
        Kind::KafkaSink => vec!["NAMESPACE", "NAME", "TOPIC", "URL", "READY", "REASON"],
        Kind::Source(_) | Kind::SinkBinding => SOURCE_HEADER.to_vec(),
    }
}

/// One object's row of `spate get <kind>`.
fn row(kind: Kind, it: &Value) -> Vec<String> {
    let (r, reason) = ready(it);
    let ns = s(it, "/metadata/namespace").to_string();
    let name = s(it, "/metadata/name").to_string();
    match kind {
        Kind::Broker => {
            let class = it
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(spate_api::BROKER_CLASS_ANNOTATION))
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_string();
            vec![ns, name, class, s(it, "/status/address/url").into(), r, reason]
        }
        Kind::Channel
        | Kind::InMemoryChannel
        | Kind::NatsJetStreamChannel
        | Kind::KafkaChannel
        | Kind::Sequence
        | Kind::Parallel => {
            vec![ns, name, s(it, "/status/address/url").into(), r, reason]
        }
        Kind::Subscription => vec![
            ns,
            name,
            s(it, "/spec/channel/name").into(),
            s(it, "/status/physicalSubscription/subscriberUri").into(),
            s(it, "/status/physicalSubscription/replyUri").into(),
            r,
            reason,
        ],
        Kind::Trigger => {
            vec![ns, name, s(it, "/spec/broker").into(), s(it, "/status/subscriberUri").into(), r, reason]
        }
        Kind::Service => vec![
            ns,
            name,
            s(it, "/status/url").into(),
            s(it, "/status/latestCreatedRevisionName").into(),
            s(it, "/status/latestReadyRevisionName").into(),
            r,
            reason,
        ],
        Kind::Secret => vec![
            ns,
            name,
            s(it, "/type").into(),
            it.get("data")
                .and_then(serde_json::Value::as_object)
                .map(|m| m.keys().cloned().collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
        ],
        Kind::ConfigMap => vec![
            ns,
            name,
            it.get("data")
                .and_then(serde_json::Value::as_object)
                .map(|m| m.keys().cloned().collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
        ],
        Kind::Namespace => vec![name, s(it, "/status/phase").into()],
        Kind::EventPolicy => {
            let from = it
                .pointer("/status/from")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            vec![ns, name, from, r, reason]
        }
        Kind::KafkaSink => {
            vec![ns, name, s(it, "/spec/topic").into(), s(it, "/status/address/url").into(), r, reason]
        }
        Kind::EventType => {
            let reference = format!("{}/{}", s(it, "/spec/reference/kind"), s(it, "/spec/reference/name"));
            vec![ns, name, attribute(it, "type"), attribute(it, "source"), reference, r]
        }
        Kind::Source(_) | Kind::SinkBinding => source_row(kind, it),
    }
}

/// An EventType attribute's value (`spec.attributes[name=…].value`).
fn attribute(it: &Value, name: &str) -> String {
    it.pointer("/spec/attributes")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .and_then(|x| x["value"].as_str())
        .unwrap_or("")
        .to_string()
}

const SOURCE_HEADER: [&str; 8] = ["NAMESPACE", "NAME", "KIND", "SINK", "EMITTED", "FAILED", "READY", "REASON"];

/// One row of `spate get sources` (and of each source kind).
pub fn source_row(kind: Kind, it: &serde_json::Value) -> Vec<String> {
    let (r, reason) = ready(it);
    let n = |p: &str| it.pointer(p).map(|v| v.to_string()).unwrap_or_default();
    vec![
        s(it, "/metadata/namespace").to_string(),
        s(it, "/metadata/name").to_string(),
        kind.name().to_string(),
        s(it, "/status/sinkUri").to_string(),
        n("/status/spate/emitted"),
        n("/status/spate/failed"),
        r,
        reason,
    ]
}

/// `spate get sources`: every source kind in one table.
pub fn sources_table(items: &[(Kind, serde_json::Value)]) -> String {
    let mut rows = vec![SOURCE_HEADER.iter().map(ToString::to_string).collect::<Vec<_>>()];
    rows.extend(items.iter().map(|(k, it)| source_row(*k, it)));
    table(rows, "sources")
}

/// Aligned columns; the first row is the header.
pub fn table(rows: Vec<Vec<String>>, plural: &str) -> String {
    if rows.len() == 1 {
        return format!("No {plural} found.\n");
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// A Trigger's last dead-lettered or dropped events, as a table (empty when none).
fn recent_failures(o: &Value) -> String {
    let Some(fs) = o.pointer("/status/spate/recentFailures").and_then(Value::as_array).filter(|f| !f.is_empty()) else {
        return String::new();
    };
    let mut rows = vec![["TIME", "OUTCOME", "ID", "TYPE", "REASON"].map(String::from).to_vec()];
    for f in fs {
        rows.push(["/time", "/outcome", "/id", "/type", "/reason"].iter().map(|p| s(f, p).to_string()).collect());
    }
    let mut out = "Recent failures:\n".to_string();
    for l in table(rows, "failures").lines() {
        out.push_str(&format!("  {l}\n"));
    }
    out
}

/// `spate describe`: one object for a reader, not a parser.
pub fn describe(o: &Value) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        if !v.is_empty() {
            out.push_str(&format!("{:<18}{v}\n", format!("{k}:")));
        }
    };
    line("Name", s(o, "/metadata/name"));
    line("Namespace", s(o, "/metadata/namespace"));
    line("Kind", &format!("{} ({})", s(o, "/kind"), s(o, "/apiVersion")));
    if let Some(owner) = o.pointer("/metadata/ownerReferences/0") {
        line("Owned by", &format!("{}/{} (read-only)", s(owner, "/kind"), s(owner, "/name")));
    }
    if let Some(a) = o.pointer("/metadata/annotations").and_then(Value::as_object) {
        for (k, v) in a {
            line("Annotation", &format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    line("Address", s(o, "/status/address/url"));
    line("Audience", s(o, "/status/address/audience"));
    line("URL", s(o, "/status/url"));
    line("Broker", s(o, "/spec/broker"));
    line("Subscriber", s(o, "/status/subscriberUri"));
    line("Subscriber", s(o, "/status/physicalSubscription/subscriberUri"));
    line("Reply", s(o, "/status/physicalSubscription/replyUri"));
    line("Dead letter sink", s(o, "/status/deadLetterSinkUri"));
    line("Sink", s(o, "/status/sinkUri"));
    if let Some(d) = o.pointer("/spec/delivery").and_then(Value::as_object) {
        let parts: Vec<String> = d.iter().map(|(k, v)| format!("{k}={}", compact(v))).collect();
        line("Delivery", &parts.join(", "));
    }
    if let Some(f) = o.pointer("/spec/filters").filter(|f| !f.is_null()).or(o.pointer("/spec/filter")) {
        line("Filter", &compact(f));
    }
    if let Some(from) = o.pointer("/status/from").and_then(Value::as_array) {
        line("Allowed senders", &from.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "));
    }
    if let Some(spate) = o.pointer("/status/spate").and_then(Value::as_object) {
        for (k, v) in spate.iter().filter(|(k, _)| *k != "recentFailures") {
            line(&format!("Live {k}"), &compact(v));
        }
    }
    out.push_str(&recent_failures(o));
    out.push_str("Conditions:\n");
    let conds = o.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    if conds.is_empty() {
        out.push_str("  (none yet)\n");
    }
    let mut rows = vec![vec!["TYPE".to_string(), "STATUS".into(), "REASON".into(), "MESSAGE".into()]];
    for c in &conds {
        rows.push(["/type", "/status", "/reason", "/message"].iter().map(|p| s(c, p).to_string()).collect());
    }
    if !conds.is_empty() {
        for l in table(rows, "conditions").lines() {
            out.push_str(&format!("  {l}\n"));
        }
    }
    out
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
