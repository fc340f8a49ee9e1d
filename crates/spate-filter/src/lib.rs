//! Trigger filters, compiled once at admission and evaluated on the hot path.
//!
//! One module per dialect joins this crate as it is implemented (Knative's
//! layout); the compiled [`Filter`] is the seam every dialect plugs into.

pub mod cel;
pub mod cel_cost;
pub mod cesql;
pub mod index;

use std::fmt;

use std::sync::Arc;

use spate_core::CloudEvent;
use thiserror::Error;

/// A problem found while compiling a filter, relative to the filter's own path.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{path}: {message}")]
pub struct FilterError {
    /// Path below the filter's root, e.g. `[1].exact.type` (empty for the root).
    pub path: String,
    pub message: String,
}

impl FilterError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FilterError { path: path.into(), message: message.into() }
    }
}

/// The seam between Spate and an embedded expression engine (today the `cel`
/// crate): compiled once at admission, evaluated against a shared
/// [`cel::EventView`]. Replacing the engine means implementing this trait.
pub trait ExpressionEngine: Send + Sync {
    /// The expression as the user wrote it.
    fn source(&self) -> &str;
    /// True only when the expression evaluates to boolean `true` without error.
    fn matches(&self, view: &cel::EventView<'_>) -> bool;
}

/// Two compiled expressions are the same filter when their sources are.
impl PartialEq for dyn ExpressionEngine {
    fn eq(&self, other: &Self) -> bool {
        self.source() == other.source()
    }
}
impl Eq for dyn ExpressionEngine {}

/// A compiled filter. `All(vec![])` matches everything.
#[derive(Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every (attribute, value) pair matches exactly.
    Exact(Vec<(String, String)>),
    /// Every attribute starts with its value.
    Prefix(Vec<(String, String)>),
    /// Every attribute ends with its value.
    Suffix(Vec<(String, String)>),
    /// The attribute exists with any value (legacy `filter.attributes` with "").
    Present(String),
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    /// A CESQL expression; an evaluation error means no match (Knative), counted.
    Cesql(Arc<cesql::Expression>),
    /// An expression in an embedded third-party language (CEL), behind our
    /// own [`ExpressionEngine`] seam; an error means no match, counted.
    Cel(Arc<dyn ExpressionEngine>),
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Exact(kv) => write!(f, "exact{kv:?}"),
            Filter::Prefix(kv) => write!(f, "prefix{kv:?}"),
            Filter::Suffix(kv) => write!(f, "suffix{kv:?}"),
            Filter::Present(k) => write!(f, "present({k})"),
            Filter::All(v) => write!(f, "all{v:?}"),
            Filter::Any(v) => write!(f, "any{v:?}"),
            Filter::Not(x) => write!(f, "not({x:?})"),
            Filter::Cesql(e) => write!(f, "cesql({})", e.source()),
            Filter::Cel(e) => write!(f, "cel({})", e.source()),
        }
    }
}

/// Attribute keys in filters: `^[a-z][a-z0-9]*$` (Knative's validation).
pub fn check_key(path: &str, key: &str) -> Result<(), FilterError> {
    let mut b = key.bytes();
    let ok =
        b.next().is_some_and(|c| c.is_ascii_lowercase()) && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(FilterError::new(path, format!("invalid attribute key '{key}': keys match ^[a-z][a-z0-9]*$")))
    }
}

impl Filter {
    /// [`Filter::matches`], except that a panic inside an evaluator (a bug the
    /// bounds did not foresee) is caught, counted and means no match: one
    /// poison event can never take the server down or stall a trigger.
    pub fn matches_guarded(&self, ev: &CloudEvent) -> bool {
        guarded(ev, || self.matches(ev))
    }
}

/// When the last over-budget line was printed (seconds since the Unix epoch).
static OVER_BUDGET_LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An evaluation that ran out of its cost budget: the filter does not match
/// this event, counted as a drop with its reason
/// (`spate_events_dropped_total{reason="filter_budget"}`) and reported on
/// stderr at most once every 10 s. The router, and every other trigger, go on.
pub(crate) fn over_budget(dialect: &'static str, ev: &CloudEvent) {
    use std::sync::atomic::Ordering;
    metrics::counter!("spate_events_dropped_total", "reason" => "filter_budget", "dialect" => dialect).increment(1);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = OVER_BUDGET_LOGGED.load(Ordering::Relaxed);
    if now >= last + 10 && OVER_BUDGET_LOGGED.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        eprintln!(
            "spate: a {dialect} filter exceeded its evaluation cost budget on event {}; it does not match that event (spate_events_dropped_total{{reason=\"filter_budget\"}})",
            ev.id
        );
    }
}

/// Runs one filter evaluation, turning a panic into "no match", counted in
/// `spate_filter_panics_total` (the panic hook has already printed the cause).
pub(crate) fn guarded(ev: &CloudEvent, eval: impl FnOnce() -> bool) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(eval)) {
        Ok(m) => m,
        Err(_) => {
            metrics::counter!("spate_filter_panics_total").increment(1);
            eprintln!("spate: a filter failed on event {}; counted as no match (spate_filter_panics_total)", ev.id);
            false
        }
    }
}

impl Filter {
    pub fn match_all() -> Filter {
        Filter::All(vec![])
    }

    /// Legacy `filter.attributes`: exact values, and "" meaning "present with any value".
    pub fn from_attributes<'a>(
        attrs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Filter, Vec<FilterError>> {
        let mut errors = vec![];
        let mut exact = vec![];
        let mut parts = vec![];
        for (k, v) in attrs {
            if let Err(e) = check_key(k, k) {
                errors.push(e);
                continue;
            }
            if v.is_empty() {
                parts.push(Filter::Present(k.to_string()));
            } else {
                exact.push((k.to_string(), v.to_string()));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if !exact.is_empty() {
            parts.insert(0, Filter::Exact(exact));
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one") } else { Filter::All(parts) })
    }

    /// A key/value dialect (`exact`, `prefix`, `suffix`): at least one key, every
    /// key valid, every value non-empty (Knative silently matches everything on
    /// an empty value; Spate rejects it).
    pub fn key_values<'a>(
        dialect: &str,
        kv: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Filter, Vec<FilterError>> {
        let mut errors = vec![];
        let mut pairs = vec![];
        for (k, v) in kv {
            if let Err(e) = check_key(k, k) {
                errors.push(e);
            } else if v.is_empty() {
                errors.push(FilterError::new(
                    k,
                    format!("empty value: an empty {dialect} value would match every event"),
                ));
            } else {
                pairs.push((k.to_string(), v.to_string()));
            }
        }
        if pairs.is_empty() && errors.is_empty() {
            errors.push(FilterError::new("", format!("{dialect} needs at least one attribute")));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(match dialect {
            "prefix" => Filter::Prefix(pairs),
            "suffix" => Filter::Suffix(pairs),
            _ => Filter::Exact(pairs),
        })
    }

    /// Compiles a CESQL expression: syntax errors carry their position;
    /// calls to unknown functions are refused here rather than failing every event.
    pub fn cesql(expr: &str) -> Result<Filter, Vec<FilterError>> {
        let e = cesql::Expression::parse(expr)
            .map_err(|e| vec![FilterError::new("", format!("CESQL syntax error {e}"))])?;
        let problems = e.static_errors();
        if !problems.is_empty() {
            return Err(problems.into_iter().map(|p| FilterError::new("", format!("CESQL: {p}"))).collect());
        }
        Ok(Filter::Cesql(Arc::new(e)))
    }

    /// Compiles a CEL expression (Spate's dialect).
    pub fn cel(expr: &str) -> Result<Filter, Vec<FilterError>> {
        cel::CelExpression::compile(expr)
            .map(|e| Filter::Cel(Arc::new(e) as Arc<dyn ExpressionEngine>))
            .map_err(|e| vec![FilterError::new("", e)])
    }

    pub fn matches(&self, ev: &CloudEvent) -> bool {
        self.matches_view(&cel::EventView::new(ev))
    }

    /// Matches against a view shared by several filters, so a payload is parsed
    /// at most once per event however many CEL filters look at it.
    pub fn matches_view(&self, view: &cel::EventView<'_>) -> bool {
        let ev = view.event;
        match self {
            Filter::Exact(kv) => kv.iter().all(|(k, v)| ev.attribute(k).is_some_and(|a| a == v.as_str())),
            Filter::Prefix(kv) => kv.iter().all(|(k, v)| ev.attribute(k).is_some_and(|a| a.starts_with(v.as_str()))),
            Filter::Suffix(kv) => kv.iter().all(|(k, v)| ev.attribute(k).is_some_and(|a| a.ends_with(v.as_str()))),
            Filter::Present(k) => ev.attribute(k).is_some(),
            Filter::All(fs) => fs.iter().all(|f| f.matches_view(view)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches_view(view)),
            Filter::Not(f) => !f.matches_view(view),
            Filter::Cesql(e) => e.matches(ev),
            Filter::Cel(e) => e.matches(view),
        }
    }
}

#[cfg(test)]
mod tests {
    use spate_core::ExtValue;

    use super::*;

    fn ev() -> CloudEvent {
        let mut e = CloudEvent::new("1", "/src/a", "com.example.created");
        e.set_extension("count", ExtValue::Integer(42));
        e.set_extension("flag", ExtValue::Boolean(true));
        e.set_extension("region", ExtValue::String("éu-west".into()));
        e
    }

    #[test]
    fn table() {
        let exact = |kv: &[(&str, &str)]| Filter::key_values("exact", kv.iter().copied()).unwrap();
        let cases: Vec<(&str, Filter, bool)> = vec![
            ("exact type", exact(&[("type", "com.example.created")]), true),
            ("exact type miss", exact(&[("type", "other")]), false),
            ("exact all keys", exact(&[("type", "com.example.created"), ("source", "/nope")]), false),
            ("missing attribute fails", exact(&[("subject", "x")]), false),
            ("integer canonical", exact(&[("count", "42")]), true),
            ("boolean canonical", exact(&[("flag", "true")]), true),
            ("unicode", exact(&[("region", "éu-west")]), true),
            ("prefix", Filter::key_values("prefix", [("type", "com.example.")]).unwrap(), true),
            ("suffix", Filter::key_values("suffix", [("source", "/a")]).unwrap(), true),
            ("legacy present", Filter::from_attributes([("count", "")]).unwrap(), true),
            ("legacy present missing", Filter::from_attributes([("subject", "")]).unwrap(), false),
            ("legacy mixed", Filter::from_attributes([("type", "com.example.created"), ("flag", "")]).unwrap(), true),
            ("empty all", Filter::All(vec![]), true),
            ("empty any", Filter::Any(vec![]), false),
            ("not", Filter::Not(Box::new(exact(&[("type", "other")]))), true),
            (
                "nested",
                Filter::Any(vec![
                    exact(&[("type", "x")]),
                    Filter::All(vec![
                        exact(&[("count", "42")]),
                        Filter::Not(Box::new(Filter::Present("subject".into()))),
                    ]),
                ]),
                true,
            ),
        ];
        let e = ev();
        for (name, f, want) in cases {
            assert_eq!(f.matches(&e), want, "{name}: {f:?}");
        }
    }

    #[test]
    fn rejections() {
        let errs = Filter::key_values("exact", [("Type", "x"), ("ok", ""), ("a-b", "y")]).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 3, "{text:?}");
        assert!(text[0].contains("invalid attribute key 'Type'"));
        assert!(text[1].contains("empty value"));
        assert!(Filter::key_values("exact", std::iter::empty()).is_err());
        assert!(Filter::from_attributes([("bad_key", "x")]).is_err());
        let e = Filter::cesql("type = 'a' AND").unwrap_err();
        assert!(e[0].message.contains("CESQL syntax error at position"), "{}", e[0]);
        let e = Filter::cesql("NOPE(type)").unwrap_err();
        assert!(e[0].message.contains("no function NOPE() taking 1 argument(s)"), "{}", e[0]);
    }
}
