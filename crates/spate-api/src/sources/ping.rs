//! PingSource (`sources.knative.dev/v1`) and the older CronJobSource
//! (`sources.eventing.knative.dev/v1alpha1`): a cron schedule, a timezone, a payload.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::{CompiledSource, SourceCtx, SourceKindDef, SourceParams, event_source};
use crate::walk::Walker;

pub(super) static PING: SourceKindDef = SourceKindDef {
    name: "PingSource",
    group: "sources.knative.dev",
    version: "v1",
    plural: "pingsources",
    also_accepts: &["sources.knative.dev/v1beta2", "sources.knative.dev/v1beta1"],
    fields: &["schedule", "timezone", "data", "dataBase64", "contentType"],
    compile,
};

pub(super) static CRON_JOB: SourceKindDef = SourceKindDef {
    name: "CronJobSource",
    group: "sources.eventing.knative.dev",
    version: "v1alpha1",
    plural: "cronjobsources",
    also_accepts: &[],
    fields: &["schedule", "data", "serviceAccountName", "resources"],
    compile,
};

/// PingSource (and the older CronJobSource).
#[derive(Debug, Clone, PartialEq)]
pub struct PingSpec {
    /// The cron expression as given (validated; 5 fields, or 6 with seconds first).
    pub schedule: String,
    /// IANA name; `None` is UTC.
    pub timezone: Option<String>,
    pub data: Option<Vec<u8>>,
    pub content_type: Option<String>,
    /// `dev.knative.sources.ping`, or `dev.knative.cronjob.event` for a CronJobSource.
    pub event_type: &'static str,
    /// `/apis/v1/namespaces/<ns>/pingsources/<name>`.
    pub event_source: String,
}

impl SourceParams for PingSpec {}
/// Validates a cron schedule: 5 fields (Knative), or 6 with seconds first (Spate's extension), or
/// a nickname such as `@hourly`.
pub fn parse_schedule(s: &str) -> Result<croner::Cron, String> {
    let fields = s.split_whitespace().count();
    if !s.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "'{s}' has {fields} fields; a schedule has 5 (minute hour day-of-month month day-of-week) or, with seconds, 6"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(s)
        .map_err(|e| format!("'{s}' is not a valid cron schedule: {e}"))
}

/// Validates an IANA timezone name.
pub fn parse_timezone(s: &str) -> Result<chrono_tz::Tz, String> {
    s.parse::<chrono_tz::Tz>().map_err(|_| format!("'{s}' is not an IANA timezone (such as Europe/Madrid or UTC)"))
}
fn compile(w: &mut Walker, m: &Map<String, Value>, cx: &SourceCtx<'_>) -> Option<CompiledSource> {
    let schedule = w.req_str(m, "schedule", "spec");
    if let Some(s) = schedule
        && let Err(e) = parse_schedule(s)
    {
        w.error("spec.schedule", e);
    }
    let timezone = w.opt_str(m, "timezone", "spec").map(str::to_string);
    if let Some(tz) = &timezone
        && let Err(e) = parse_timezone(tz)
    {
        w.error("spec.timezone", e);
    }
    let text = w.opt_str(m, "data", "spec");
    let b64 = w.opt_str(m, "dataBase64", "spec");
    let data = match (text, b64) {
        (Some(_), Some(_)) => {
            w.error("spec.dataBase64", "give data or dataBase64, not both");
            None
        }
        (Some(t), None) => Some(t.as_bytes().to_vec()),
        (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                w.error("spec.dataBase64", format!("is not valid base64: {e}"));
                None
            }
        },
        (None, None) => None,
    };
    let content_type = w.opt_str(m, "contentType", "spec").map(str::to_string);
    let event_type =
        if cx.plural == CRON_JOB.plural { "dev.knative.cronjob.event" } else { "dev.knative.sources.ping" };
    let event_source = event_source(cx);
    let spec = PingSpec { schedule: schedule?.to_string(), timezone, data, content_type, event_type, event_source };
    Some(CompiledSource::new(spec))
}
