//! OpenTelemetry spans along an event's path, linked by W3C `traceparent`:
//! the producer's context (the event's `traceparent` extension) is the parent
//! of the broker's ingress span; each delivery attempt is a client span whose
//! context goes to the subscriber in the `traceparent` header; a reply without
//! its own `traceparent` continues the attempt's trace, so the tree goes on
//! through replies. Off unless the binary installs an exporter
//! (`--otlp-endpoint`): then [`enabled`] is true; otherwise nothing here runs.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer};
use opentelemetry::{Context, KeyValue, global};
use spate_core::{CloudEvent, ExtValue, ext};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Called once by the binary after it installed a tracer provider.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub type Span = global::BoxedSpan;

/// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    let mut parts = tp.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    Some(SpanContext::new(trace_id, span_id, flags, true, TraceState::default()))
}

/// `traceparent` of a span context.
pub fn traceparent(sc: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
}

/// The context an event carries (its `traceparent` extension), or a new root.
pub fn context_of(ev: &CloudEvent) -> Context {
    match ev.extension(ext::TRACEPARENT) {
        Some(ExtValue::String(tp)) => match parse_traceparent(tp) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        },
        _ => Context::new(),
    }
}

/// Starts a span named `name` under `parent`.
pub fn start(name: String, kind: SpanKind, parent: &Context, attributes: Vec<KeyValue>) -> Span {
    let tracer = global::tracer("spate");
    tracer.span_builder(name).with_kind(kind).with_attributes(attributes).start_with_context(&tracer, parent)
}

/// The context of a started span (to be the parent of the next).
pub fn context_with(span: Span) -> Context {
    Context::new().with_span(span)
}

/// Sets `ev`'s `traceparent` to `sc` unless it has one (a reply continues its request's trace).
pub fn adopt(ev: &mut CloudEvent, sc: &SpanContext) {
    if ev.extension(ext::TRACEPARENT).is_none() && sc.is_valid() {
        ev.set_extension(ext::TRACEPARENT, ExtValue::String(traceparent(sc)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert_eq!(traceparent(&sc), tp);
        for bad in [
            "",
            "00-xyz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf9-1-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
