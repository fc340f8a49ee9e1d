//! IntegrationSource: `timer` (an event every `period` ms, `repeatCount` times
//! or forever), `aws.s3` and `aws.sqs`, with Knative's connector event types.

use std::time::Duration;

use bytes::Bytes;
use spate_api::{IntegrationSpec, TimerSpec};
use spate_core::{CloudEvent, ExtValue};

use crate::Start;
use crate::emit::{Emitter, now_rfc3339, uuid};

pub(crate) fn start(st: &mut Start<'_>) {
    let Some(spec) = st.spec::<IntegrationSpec>().cloned() else { return };
    match spec {
        IntegrationSpec::Timer(t) => {
            let (emitter, stop) = (st.emitter.clone(), st.stop.clone());
            st.spawn(timer(t, emitter, stop));
        }
        IntegrationSpec::S3(_) | IntegrationSpec::Sqs(_) => {
            st.fail("NotSupported", "aws.s3 and aws.sqs are not built yet in this version of Spate")
        }
    }
}

/// Knative's connector attributes: `type`, `source` and `subject` per connector.
fn event(spec: &IntegrationSpec, data: Bytes, content_type: Option<String>) -> CloudEvent {
    let (ty, source, subject) = spec.event_identity();
    let mut ev = CloudEvent::new(uuid(), source, ty);
    ev.subject = Some(subject.to_string());
    ev.time = Some(now_rfc3339());
    ev.datacontenttype = content_type;
    ev.data = Some(data);
    ev
}

/// Ticks every `period_ms` from start (missed ticks are skipped, not bunched);
/// each tick's delivery runs on its own task so a slow sink never delays the next.
async fn timer(t: TimerSpec, emitter: std::sync::Arc<Emitter>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_millis(t.period_ms.max(1)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    every.tick().await;
    let spec = IntegrationSpec::Timer(t.clone());
    let mut n = 0u64;
    while t.repeat_count.is_none_or(|max| n < max) {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        let mut ev = event(&spec, Bytes::from(t.message.clone()), Some(t.content_type.clone()));
        ev.set_extension("sequence", ExtValue::Integer(n as i32));
        let em = emitter.clone();
        tokio::spawn(async move {
            em.emit(ev).await;
        });
    }
}
