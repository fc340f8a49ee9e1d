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
            let mut rows: Vec<Vec<String>> = vec![];
            let header: Vec<&str> = match kind {
                Kind::Broker => vec!["NAMESPACE", "NAME", "URL", "READY", "REASON"],
                Kind::Trigger => vec!["NAMESPACE", "NAME", "BROKER", "SUBSCRIBER_URI", "READY", "REASON"],
                Kind::Channel | Kind::InMemoryChannel | Kind::Sequence | Kind::Parallel => {
                    vec!["NAMESPACE", "NAME", "URL", "READY", "REASON"]
                }
                Kind::Subscription => {
                    vec!["NAMESPACE", "NAME", "CHANNEL", "SUBSCRIBER_URI", "REPLY_URI", "READY", "REASON"]
                }
                Kind::Service => vec!["NAMESPACE", "NAME", "URL", "LATESTCREATED", "LATESTREADY", "READY", "REASON"],
            };
            rows.push(header.iter().map(ToString::to_string).collect());
            for it in items {
                let (r, reason) = ready(it);
                let ns = s(it, "/metadata/namespace").to_string();
                let name = s(it, "/metadata/name").to_string();
                rows.push(match kind {
                    Kind::Broker => vec![ns, name, s(it, "/status/address/url").into(), r, reason],
                    Kind::Channel | Kind::InMemoryChannel | Kind::Sequence | Kind::Parallel => {
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
                });
            }
            table(rows, kind.plural())
        }
    }
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
