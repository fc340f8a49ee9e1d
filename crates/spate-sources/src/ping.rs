//! PingSource (and CronJobSource): a timer per source that emits one event per
//! tick of its cron schedule, in its timezone. Each tick's delivery runs on
//! its own task, so a slow sink never delays the next tick. Ticks missed while
//! Spate was stopped are not replayed: the schedule resumes from now.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use spate_api::PingSpec;
use spate_core::CloudEvent;
use tokio::sync::watch;

use crate::Start;
use crate::emit::{Emitter, uuid};

pub(crate) fn event(spec: &PingSpec, time: String) -> CloudEvent {
    let mut ev = CloudEvent::new(uuid(), spec.event_source.clone(), spec.event_type);
    ev.time = Some(time);
    ev.datacontenttype = spec.content_type.clone();
    ev.data = spec.data.as_ref().map(|d| Bytes::from(d.clone()));
    ev
}

/// Runs until `stop` flips. Schedule and timezone were validated at admission.
/// Each tick is claimed first (`<label>/<unix seconds>`): with several
/// instances, exactly one emits it.
pub(crate) async fn run(
    spec: PingSpec,
    emitter: Arc<Emitter>,
    claims: Arc<dyn crate::Claims>,
    mut stop: watch::Receiver<bool>,
) {
    let (cron, tz) = match (
        spate_api::parse_schedule(&spec.schedule),
        spec.timezone.as_deref().map(spate_api::parse_timezone).transpose(),
    ) {
        (Ok(c), Ok(tz)) => (c, tz.unwrap_or(chrono_tz::UTC)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(source = %emitter.label, error = %e, "schedule rejected at start");
            return;
        }
    };
    let mut from = Utc::now().with_timezone(&tz);
    loop {
        let next = match cron.find_next_occurrence(&from, false) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(source = %emitter.label, error = %e, "the schedule has no next tick");
                return;
            }
        };
        let wait = (next.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let time = next.to_rfc3339_opts(SecondsFormat::Secs, true);
        let ev = event(&spec, time);
        let (em, claims) = (emitter.clone(), claims.clone());
        let key = format!("{}/{}", emitter.label, next.timestamp());
        tokio::spawn(async move {
            if claims.claim(key).await {
                em.emit(ev).await;
            }
        });
        // The next tick strictly after this one; after a long stall (a suspended machine),
        // resume from now rather than replaying every missed tick.
        let now = Utc::now().with_timezone(&tz);
        from = if now - next > chrono::TimeDelta::seconds(5) { now } else { next };
    }
}

/// Starts a PingSource or CronJobSource.
pub(crate) fn start(st: &mut Start<'_>) {
    let Some(spec) = st.spec::<PingSpec>().cloned() else { return };
    let (emitter, claims, stop) = (st.emitter.clone(), st.sources.claims.clone(), st.stop.clone());
    st.spawn(run(spec, emitter, claims, stop));
}
