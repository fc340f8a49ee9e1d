use serde_json::Value;
use spate_core::Destination;
use spate_filter::{Filter, FilterError};

use crate::delivery::{self, DeliverySpec};
use crate::walk::{Walker, join};
use crate::{MAX_IN_FLIGHT_ANNOTATION, ORDER_ANNOTATION, RABBITMQ_PARALLELISM_ANNOTATION, meta};

#[derive(Debug, Clone, PartialEq)]
pub struct TriggerConfig {
    pub namespace: String,
    pub name: String,
    pub broker: String,
    pub filter: Filter,
    pub subscriber: Destination,
    pub delivery: Option<DeliverySpec>,
    /// One event in flight at a time, in log order.
    pub ordered: bool,
    /// Bound on in-flight events (None: the server default).
    pub max_in_flight: Option<usize>,
}

fn filter_errors(w: &mut Walker, base: &str, errs: Vec<FilterError>) {
    for e in errs {
        let p = if e.path.is_empty() { base.to_string() } else { join(base, &e.path) };
        w.error(&p, e.message);
    }
}

const DIALECTS: &[&str] = &["exact", "prefix", "suffix", "all", "any", "not", "cesql", "cel"];

pub(crate) fn compile_filter(w: &mut Walker, v: &Value, path: &str) -> Option<Filter> {
    let m = w.object(v, path, DIALECTS)?;
    if m.len() != 1 {
        w.error(path, format!("exactly one dialect per filter (one of {}), found {}", DIALECTS.join(", "), m.len()));
        return None;
    }
    let (dialect, body) = m.iter().next().expect("one entry");
    let p = join(path, dialect);
    match dialect.as_str() {
        "exact" | "prefix" | "suffix" => {
            let pairs = w.string_map(body, &p);
            match Filter::key_values(dialect, pairs) {
                Ok(f) => Some(f),
                Err(e) => {
                    filter_errors(w, &p, e);
                    None
                }
            }
        }
        "all" | "any" => {
            let Value::Array(items) = body else {
                w.error(&p, "must be a list of filters");
                return None;
            };
            let fs: Vec<Option<Filter>> =
                items.iter().enumerate().map(|(i, f)| compile_filter(w, f, &format!("{p}[{i}]"))).collect();
            let fs: Option<Vec<Filter>> = fs.into_iter().collect();
            fs.map(|fs| if dialect == "all" { Filter::All(fs) } else { Filter::Any(fs) })
        }
        "not" => compile_filter(w, body, &p).map(|f| Filter::Not(Box::new(f))),
        "cel" => expression(w, body, &p, "CEL", Filter::cel),
        _ => expression(w, body, &p, "CESQL", Filter::cesql),
    }
}

/// An expression dialect: the body must be a string that `compile` accepts.
fn expression(
    w: &mut Walker,
    body: &Value,
    path: &str,
    language: &str,
    compile: fn(&str) -> Result<Filter, Vec<FilterError>>,
) -> Option<Filter> {
    let Value::String(expr) = body else {
        w.error(path, format!("must be a {language} expression string"));
        return None;
    };
    compile(expr).map_err(|e| filter_errors(w, path, e)).ok()
}

pub fn compile(w: &mut Walker, spec: &Value, namespace: &str, name: &str, metadata: &Value) -> Option<TriggerConfig> {
    let m = w.object(spec, "spec", &["broker", "filter", "filters", "subscriber", "delivery"])?;
    let broker = w.req_str(m, "broker", "spec").map(str::to_string);
    let legacy = match m.get("filter") {
        None | Some(Value::Null) => Some(Filter::match_all()),
        Some(f) => w.object(f, "spec.filter", &["attributes", "sourceAndType"]).and_then(|fm| {
            let mut pairs = fm.get("attributes").map(|a| w.string_map(a, "spec.filter.attributes")).unwrap_or_default();
            // The older `sourceAndType: {type, source}` form: exact matches, where an
            // empty value or `Any` means any value (Knative v1alpha1).
            if let Some(st) = fm.get("sourceAndType")
                && let Some(stm) = w.object(st, "spec.filter.sourceAndType", &["type", "source"])
            {
                for key in ["type", "source"] {
                    match w.opt_str(stm, key, "spec.filter.sourceAndType") {
                        None | Some("") | Some("Any") => {}
                        Some(v) if pairs.iter().any(|(k, _)| *k == key) => {
                            w.error(
                                &format!("spec.filter.sourceAndType.{key}"),
                                format!("'{v}' conflicts with spec.filter.attributes.{key}"),
                            );
                        }
                        Some(v) => pairs.push((key, v)),
                    }
                }
            }
            match Filter::from_attributes(pairs) {
                Ok(f) => Some(f),
                Err(e) => {
                    filter_errors(w, "spec.filter.attributes", e);
                    None
                }
            }
        }),
    };
    let filters = match m.get("filters") {
        None | Some(Value::Null) => Some(vec![]),
        Some(Value::Array(items)) => {
            let fs: Vec<Option<Filter>> =
                items.iter().enumerate().map(|(i, f)| compile_filter(w, f, &format!("spec.filters[{i}]"))).collect();
            fs.into_iter().collect()
        }
        Some(_) => {
            w.error("spec.filters", "must be a list of filters");
            None
        }
    };
    // A non-empty `filters` overrides the legacy `filter` (Knative's rule).
    let filter = match (filters, legacy) {
        (Some(fs), _) if !fs.is_empty() => {
            Some(if fs.len() == 1 { fs.into_iter().next().expect("one") } else { Filter::All(fs) })
        }
        (Some(_), legacy) => legacy,
        (None, _) => None,
    };
    let subscriber = match m.get("subscriber") {
        None => {
            w.error("spec.subscriber", "is required");
            None
        }
        Some(s) => delivery::destination(w, s, "spec.subscriber", namespace),
    };
    let delivery = m.get("delivery").and_then(|d| delivery::parse(w, d, "spec.delivery", namespace));
    let ordered = match meta::annotation(metadata, ORDER_ANNOTATION) {
        None | Some("unordered") => false,
        Some("ordered") => true,
        Some(other) => {
            w.error(
                &format!("metadata.annotations[{ORDER_ANNOTATION}]"),
                format!("'{other}' is not one of ordered, unordered"),
            );
            false
        }
    };
    // Knative's RabbitMQ broker names the in-flight bound `parallelism` (1 keeps order).
    let bound = |w: &mut Walker, key: &str| match meta::annotation(metadata, key) {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                w.error(&format!("metadata.annotations[{key}]"), format!("'{v}' must be a whole number ≥ 1"));
                None
            }
        },
    };
    let max_in_flight = bound(w, MAX_IN_FLIGHT_ANNOTATION).or(bound(w, RABBITMQ_PARALLELISM_ANNOTATION));
    Some(TriggerConfig {
        namespace: namespace.to_string(),
        name: name.to_string(),
        broker: broker?,
        filter: filter?,
        subscriber: subscriber?,
        delivery,
        ordered,
        max_in_flight,
    })
}
