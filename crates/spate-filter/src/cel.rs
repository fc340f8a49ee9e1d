//! The `cel` dialect (Spate's addition to Knative's list): a CEL expression
//! over two variables, `event` (context attributes and extensions by name)
//! and `data` (the payload: parsed JSON when the content type is JSON, else a
//! string, else bytes). Uses the `cel` crate behind this module; compiled at
//! admission; an evaluation error means no match, counted.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, OnceLock};

use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Program, Value};
use spate_core::{CloudEvent, ExtValue};

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// A compiled CEL expression.
pub struct CelExpression {
    program: Program,
    source: String,
    /// The cost estimate, checked against each event before it runs.
    cost: crate::cel_cost::CostModel,
}

impl fmt::Debug for CelExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cel({})", self.source)
    }
}

impl PartialEq for CelExpression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for CelExpression {}

/// The variables an expression sees, each built on first use and at most
/// once per event, directly in the interpreter's representation (attribute
/// strings are borrowed from the event). Evaluations borrow them through a
/// resolver; binding a `Value::Map` instead would deep-convert it every time.
pub struct CelVars<'a> {
    ev: &'a CloudEvent,
    event: OnceLock<Box<dyn Val + 'a>>,
    data: OnceLock<Box<dyn Val + 'a>>,
}

impl<'a> VariableResolver for CelVars<'a> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match variable {
            "event" => Some(CowVal::Borrowed(&**self.event.get_or_init(|| event_map(self.ev)))),
            "data" => Some(CowVal::Borrowed(&**self.data.get_or_init(|| data_val(self.ev)))),
            _ => None,
        }
    }
}

#[cfg(test)]
thread_local! {
    /// How many payloads this thread parsed (tests check "at most once per event").
    pub(crate) static DATA_BUILDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn event_map(ev: &CloudEvent) -> Box<dyn Val + '_> {
    let mut m: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = HashMap::with_capacity(8 + ev.extensions.len());
    let mut put = |k: &'static str, v: &str| {
        m.insert(CelMapKey::from(k), Box::new(CelString::from(v.to_string())));
    };
    put("specversion", ev.specversion.as_str());
    put("id", &ev.id);
    put("source", &ev.source);
    put("type", &ev.ty);
    for (k, v) in [
        ("datacontenttype", &ev.datacontenttype),
        ("subject", &ev.subject),
        ("time", &ev.time),
        (ev.specversion.schema_attr(), &ev.dataschema),
    ] {
        if let Some(v) = v {
            put(k, v);
        }
    }
    for (k, v) in &ev.extensions {
        let v: Box<dyn Val> = match v {
            ExtValue::String(x) => Box::new(CelString::from(x.as_str())),
            ExtValue::Integer(i) => Box::new(CelInt::from(i64::from(*i))),
            ExtValue::Boolean(b) => Box::new(CelBool::from(*b)),
        };
        m.insert(CelMapKey::from(k.as_str()), v);
    }
    Box::new(CelMap::from(m))
}

fn json_val(v: serde_json::Value) -> Box<dyn Val + 'static> {
    match v {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(b) => Box::new(CelBool::from(b)),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        serde_json::Value::String(s) => Box::new(CelString::from(s)),
        serde_json::Value::Array(a) => Box::new(CelList::from(a.into_iter().map(json_val).collect::<Vec<_>>())),
        serde_json::Value::Object(o) => {
            let map: HashMap<CelMapKey<'static>, Box<dyn Val>> =
                o.into_iter().map(|(k, v)| (CelMapKey::from(k), json_val(v))).collect();
            Box::new(CelMap::from(map))
        }
    }
}

/// `data`: parsed JSON when the content type is JSON (or absent and the
/// payload parses), else the text, else the bytes; null without data.
fn data_val(ev: &CloudEvent) -> Box<dyn Val + '_> {
    #[cfg(test)]
    DATA_BUILDS.with(|b| b.set(b.get() + 1));
    let Some(d) = &ev.data else { return Box::new(CelNull) };
    let json = ev.datacontenttype.as_deref().is_none_or(spate_core::json::is_json_media_type);
    if json && let Ok(v) = serde_json::from_slice::<serde_json::Value>(d) {
        return json_val(v);
    }
    match std::str::from_utf8(d) {
        Ok(t) => Box::new(CelString::from(t)),
        Err(_) => Box::new(CelBytes::from(d.to_vec())),
    }
}

impl<'a> CelVars<'a> {
    pub fn new(ev: &'a CloudEvent) -> Self {
        CelVars { ev, event: OnceLock::new(), data: OnceLock::new() }
    }
}

/// An event as filters see it; CEL variables are built on first use and shared
/// by every filter evaluated against this view.
pub struct EventView<'a> {
    pub event: &'a CloudEvent,
    vars: CelVars<'a>,
}

impl<'a> EventView<'a> {
    pub fn new(event: &'a CloudEvent) -> Self {
        EventView { event, vars: CelVars::new(event) }
    }
}

/// The deepest bracket nesting (`(`, `[`, `{`) admitted in a CEL expression.
pub const MAX_NESTING: usize = 32;
/// The most operators (and commas) admitted in a CEL expression: a chain of
/// operators is a tree as deep as it is long, so this bounds evaluation depth.
pub const MAX_OPERATORS: usize = 256;
/// The longest CEL expression admitted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 16 * 1024;

/// CEL macros that iterate over a list or map.
const COMPREHENSIONS: &[&str] = &["all", "exists", "exists_one", "map", "filter"];

/// Checks the size and shape of an expression *before* the `cel` crate sees
/// it, so that neither its parser nor its evaluator can recurse without bound.
/// A linear scan that skips string literals; no recursion.
/// Returns the names the expression's comprehensions bind (`x` in `.all(x, …)`).
fn check_bounds(source: &str) -> Result<Vec<String>, String> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(format!("CEL expression is {} bytes long; at most {MAX_SOURCE_BYTES} are allowed", source.len()));
    }
    let b = source.as_bytes();
    let (mut depth, mut max_depth, mut ops) = (0usize, 0usize, 0usize);
    // Bracket depths at which a comprehension's arguments are open: a second one
    // inside would cost the product of two list sizes, and lists come from payloads.
    let mut comprehensions: Vec<usize> = vec![];
    let mut bound = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' {
            let name_end = b[i + 1..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .map_or(b.len(), |p| i + 1 + p);
            let name = &source[i + 1..name_end];
            if COMPREHENSIONS.contains(&name) && b.get(name_end) == Some(&b'(') {
                if !comprehensions.is_empty() {
                    return Err(format!(
                        "CEL comprehension .{name}() inside another comprehension: nested comprehensions are not allowed (their cost multiplies with the payload's list sizes)"
                    ));
                }
                comprehensions.push(depth + 1);
                let arg = source[name_end + 1..].trim_start();
                let var: String = arg.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !var.is_empty() {
                    bound.push(var);
                }
            }
        }
        match b[i] {
            q @ (b'\'' | b'"') => {
                // A string literal (triple-quoted or not); escapes skip one byte.
                let triple = b.len() >= i + 3 && b[i + 1] == q && b[i + 2] == q;
                let close: &[u8] = if triple { &b[i..i + 3] } else { &b[i..i + 1] };
                i += close.len();
                while i < b.len() && !b[i..].starts_with(close) {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += close.len();
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            b')' | b']' | b'}' => {
                if comprehensions.last() == Some(&depth) {
                    comprehensions.pop();
                }
                depth = depth.saturating_sub(1);
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'!' | b'<' | b'>' | b'?' | b',' | b'.' => ops += 1,
            b'&' | b'|' | b'=' if b.get(i + 1) == Some(&b[i]) => {
                ops += 1;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    if max_depth > MAX_NESTING {
        return Err(format!("CEL expression nests deeper than {MAX_NESTING} levels of brackets"));
    }
    if ops > MAX_OPERATORS {
        return Err(format!("CEL expression has {ops} operators; at most {MAX_OPERATORS} are allowed"));
    }
    Ok(bound)
}

/// What the cost estimate's `S` is: the bytes of the payload and of every attribute.
fn event_size(ev: &CloudEvent) -> u64 {
    let attrs = [&ev.datacontenttype, &ev.subject, &ev.time, &ev.dataschema]
        .into_iter()
        .map(|a| a.as_ref().map_or(0, String::len))
        .sum::<usize>();
    let ext: usize =
        ev.extensions.iter().map(|(k, v)| k.len() + if let ExtValue::String(s) = v { s.len() } else { 8 }).sum();
    (ev.data.as_ref().map_or(0, |d| d.len()) + ev.id.len() + ev.source.len() + ev.ty.len() + attrs + ext) as u64
}

impl CelExpression {
    /// Compiles an expression; only the variables `event` and `data` exist.
    /// Size and nesting are bounded first ([`MAX_NESTING`], [`MAX_OPERATORS`]).
    pub fn compile(source: &str) -> Result<CelExpression, String> {
        let bound = check_bounds(source)?;
        let program = Program::compile(source).map_err(|e| format!("CEL syntax error: {e}"))?;
        let refs = program.references();
        let unknown: Vec<&str> = refs
            .variables()
            .into_iter()
            .filter(|v| *v != "event" && *v != "data" && !bound.iter().any(|b| b == v))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "CEL: unknown variable(s) {} (the expression sees `event` and `data`)",
                unknown.join(", ")
            ));
        }
        let cost = crate::cel_cost::CostModel::of(program.expression());
        Ok(CelExpression { program, source: source.to_string(), cost })
    }
}

impl crate::ExpressionEngine for CelExpression {
    fn source(&self) -> &str {
        &self.source
    }

    /// True only when the expression evaluates to boolean `true`.
    fn matches(&self, view: &EventView<'_>) -> bool {
        if self.cost.estimate(event_size(view.event)) > crate::cel_cost::MAX_COST {
            crate::over_budget("cel", view.event);
            return false;
        }
        let mut ctx = Context::with_env(ENV.clone());
        ctx.set_variable_resolver(&view.vars);
        match self.program.execute(&ctx) {
            Ok(Value::Bool(b)) => b,
            Ok(_) => {
                metrics::counter!("spate_cel_evaluation_errors_total", "reason" => "not_boolean").increment(1);
                false
            }
            Err(_) => {
                metrics::counter!("spate_cel_evaluation_errors_total", "reason" => "error").increment(1);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::Filter;
    use crate::index::FilterIndex;

    fn ev(ty: &str, data: Option<&str>, ct: Option<&str>) -> CloudEvent {
        let mut e = CloudEvent::new("1", "/s", ty);
        e.set_extension("score", ExtValue::Integer(7));
        e.set_extension("vip", ExtValue::Boolean(true));
        e.data = data.map(|d| Bytes::from(d.to_string()));
        e.datacontenttype = ct.map(str::to_string);
        e
    }

    #[test]
    fn table() {
        let json = ev(
            "live.comment",
            Some(r#"{"score": 0.93, "user": {"name": "ana"}, "tags": ["a", "b"]}"#),
            Some("application/json"),
        );
        let text = ev("live.comment", Some("hello"), Some("text/plain"));
        let none = ev("other", None, None);
        let cases: Vec<(&str, &CloudEvent, bool)> = vec![
            ("event.type.startsWith('live.') && data.score > 0.8", &json, true),
            ("data.user.name == 'ana' && 'b' in data.tags", &json, true),
            ("event.score > 5 && event.vip", &json, true),
            ("event.type == 'other'", &none, true),
            ("data == 'hello'", &text, true),
            ("data.score > 0.8", &text, false),
            ("data.score > 0.8", &none, false),
            ("has(event.subject)", &json, false),
            ("event.missing == 'x'", &json, false),
            ("1 + 1", &json, false),
            ("event.type.matches('^live\\\\.[a-z]+$')", &json, true),
        ];
        for (expr, e, want) in cases {
            let f = Filter::cel(expr).unwrap_or_else(|err| panic!("{expr}: {err:?}"));
            assert_eq!(f.matches(e), want, "{expr}");
        }
    }

    #[test]
    fn compile_errors() {
        let e = Filter::cel("event.type ==").unwrap_err();
        assert!(e[0].message.starts_with("CEL syntax error"), "{}", e[0]);
        let e = Filter::cel("payload.x > 1").unwrap_err();
        assert!(e[0].message.contains("unknown variable(s) payload"), "{}", e[0]);
    }

    #[test]
    fn the_payload_is_parsed_once_per_event_however_many_filters_use_it() {
        let filters = vec![
            Filter::cel("data.a == 1").unwrap(),
            Filter::cel("data.b == 2").unwrap(),
            Filter::All(vec![
                Filter::key_values("exact", [("type", "t")]).unwrap(),
                Filter::cel("data.a + data.b == 3").unwrap(),
            ]),
            Filter::key_values("exact", [("type", "t")]).unwrap(),
        ];
        let index = FilterIndex::new(filters.into_iter().enumerate());
        let e = ev("t", Some(r#"{"a": 1, "b": 2}"#), Some("application/json"));
        DATA_BUILDS.with(|b| b.set(0));
        assert_eq!(index.matching(&e).count(), 4);
        assert_eq!(DATA_BUILDS.with(|b| b.get()), 1, "one parse for three CEL filters");
        // No CEL filter looks at an event of another type? The two non-indexed ones still do, once.
        DATA_BUILDS.with(|b| b.set(0));
        let other = ev("u", Some(r#"{"a": 1}"#), Some("application/json"));
        assert_eq!(index.matching(&other).count(), 1);
        assert_eq!(DATA_BUILDS.with(|b| b.get()), 1);
    }
}
