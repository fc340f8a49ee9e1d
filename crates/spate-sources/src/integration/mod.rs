//! IntegrationSource: `timer` (an event every `period` ms, `repeatCount` times
//! or forever), `aws.s3` ([`s3`]) and `aws.sqs` ([`sqs`]), with Knative's
//! connector event types.

mod aws;
pub(crate) use aws::uri_encode;
mod s3;
mod sqs;

use std::time::Duration;

use bytes::Bytes;
use spate_api::{IntegrationSpec, TimerSpec};
use spate_core::{CloudEvent, ExtValue};

use crate::Start;
use crate::emit::{Emitter, now_rfc3339, uuid};
use crate::held::Held;

pub(crate) fn start(st: &mut Start<'_>) {
    let Some(spec) = st.spec::<IntegrationSpec>().cloned() else { return };
    match spec {
        IntegrationSpec::Timer(t) => {
            let (emitter, stop) = (st.emitter.clone(), st.stop.clone());
            st.spawn(timer(t, emitter, stop));
        }
        IntegrationSpec::S3(spec) => {
            let creds = credentials(st, spec.common.auth.as_ref());
            let held = Held::new(st.emitter.clone(), spec.common.max_messages_per_poll, st.stop.clone());
            let max_object = st.sources.cfg.max_event_size;
            let s3 = s3::S3 { spec, max_object, creds, client: st.sources.client.clone(), held };
            let stop = st.stop.clone();
            st.spawn(s3.run(stop));
        }
        IntegrationSpec::Sqs(spec) => {
            let creds = credentials(st, spec.common.auth.as_ref());
            let held = Held::new(st.emitter.clone(), spec.common.max_messages_per_poll, st.stop.clone());
            st.keep(std::sync::Arc::new(crate::driver::Lag(st.emitter.stats.clone())));
            let sqs = sqs::Sqs { spec, creds, client: st.sources.client.clone(), held };
            let stop = st.stop.clone();
            st.spawn(sqs.run(stop));
        }
    }
}

/// The Secret's `aws.accessKey` and `aws.secretKey`; without `auth`, requests go unsigned
/// (an S3-compatible server that allows anonymous access, or moto).
fn credentials(st: &Start<'_>, auth: Option<&spate_api::AwsAuth>) -> Option<aws::Credentials> {
    let a = auth?;
    Some(aws::Credentials { access_key: st.secret(&a.access_key)?, secret_key: st.secret(&a.secret_key)? })
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
