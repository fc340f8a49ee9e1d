//! RocketMQSource: a `rocketmq-client-rust` push consumer in clustering mode
//! (the queues of the topic are shared by every consumer of the group). The
//! client calls its listener on a blocking thread; the listener hands each
//! message to the sink on Spate's runtime and answers "consumed" only once the
//! sink or the dead-letter sink accepted it, so the consumer's offset never
//! passes an event nobody took. On stop (or a kill) what was not answered is
//! consumed again: at least once. `ordered: true` consumes each queue in order.
//!
//! The client brings its own Tokio runtime (`rocketmq-runtime`), made once per
//! process on the first RocketMQSource and kept for the life of the process.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rocketmq_client_rust::prelude::DefaultMQPushConsumer;
use rocketmq_client_rust::{
    AclClientRPCHook, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
    ConsumeOrderlyContext, ConsumeOrderlyStatus, MQPushConsumer, MessageListenerConcurrently, MessageListenerOrderly,
    SessionCredentials, TelemetryHandle,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use spate_api::RocketmqSpec;
use spate_core::{CloudEvent, ExtValue};
use tokio::sync::watch;

use crate::Start;
use crate::driver::Upstream;
use crate::emit::{Emitter, uuid};

/// The client's runtime: built once, never dropped (dropping a runtime inside Spate's would panic).
/// Blocking threads of the client runtime: one per message a listener may hold.
const BLOCKING: usize = 64;

static CLIENT: OnceLock<Result<Arc<ClientRuntime>, String>> = OnceLock::new();

fn client_runtime() -> Result<Arc<ClientRuntime>, String> {
    CLIENT
        .get_or_init(|| {
            // Listeners block (each holds a message until the sink accepted it): room for many.
            let cfg = rocketmq_runtime::RuntimeConfig::for_parallelism("spate-rocketmq", 2)
                .with_max_blocking_threads(BLOCKING)
                .map_err(|e| format!("RocketMQ client runtime: {e}"))?;
            let owner = rocketmq_runtime::RuntimeOwner::plan(cfg)
                .map_err(|e| format!("RocketMQ client runtime: {e}"))?
                .build()
                .map_err(|e| format!("RocketMQ client runtime: {e}"))?;
            let rt = ClientRuntime::try_new(
                owner.root_context().component("client"),
                ClientRuntimeConfig::default(),
                TelemetryHandle::noop(),
            )
            .map_err(|e| format!("RocketMQ client runtime: {e}"))?;
            // The owner holds the runtime's threads: it lives as long as the process.
            Box::leak(Box::new(owner));
            Ok(rt)
        })
        .clone()
}

pub(crate) fn start(st: &mut Start<'_>) {
    let Some(spec) = st.spec::<RocketmqSpec>().cloned() else { return };
    let creds = match (spec.access_key.as_ref(), spec.secret_key.as_ref()) {
        (Some(a), Some(s)) => st.secret(a).zip(st.secret(s)),
        _ => None,
    };
    let runtime = match client_runtime() {
        Ok(r) => r,
        Err(e) => return st.fail("ClientFailed", e),
    };
    let listener = Listener {
        emitter: st.emitter.clone(),
        handle: tokio::runtime::Handle::current(),
        stop: st.stop.clone(),
        source: spec.event_source.clone(),
    };
    let upstream = Arc::new(Upstream::default());
    st.keep(upstream.clone());
    let stop = st.stop.clone();
    st.spawn(run(spec, creds, runtime, listener, upstream, stop));
}

async fn run(
    spec: RocketmqSpec,
    creds: Option<(String, String)>,
    runtime: Arc<ClientRuntime>,
    listener: Listener,
    upstream: Arc<Upstream>,
    mut stop: watch::Receiver<bool>,
) {
    let label = listener.emitter.label.clone();
    let listener = Arc::new(listener);
    // The name server may be down at first: try again every 5 s, and say why meanwhile.
    let mut consumer = loop {
        match start_consumer(&spec, &creds, &runtime, &listener).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(source = %label, error = %e, "RocketMQ consumer did not start; retrying in 5 s");
                upstream.failed(format!("RocketMQ at {}: {e}", spec.namesrv_addr));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    };
    upstream.ok();
    let _ = stop.wait_for(|s| *s).await;
    consumer.shutdown().await;
}

async fn start_consumer(
    spec: &RocketmqSpec,
    creds: &Option<(String, String)>,
    runtime: &Arc<ClientRuntime>,
    listener: &Arc<Listener>,
) -> Result<DefaultMQPushConsumer, String> {
    let mut builder = DefaultMQPushConsumer::builder(runtime.clone())
        .consumer_group(spec.group.clone())
        .name_server_addr(spec.namesrv_addr.clone())
        // A new group starts from the oldest message; an existing one from its committed offsets.
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        // A listener call takes a batch and holds a blocking thread until all of it was
        // accepted: few, larger calls keep within the client's blocking-lane admission.
        .pull_batch_size(16)
        .consume_message_batch_max_size(16);
    if let Some((ak, sk)) = creds {
        let hook = AclClientRPCHook::new(SessionCredentials::with_keys(ak.clone(), sk.clone()));
        builder = builder.rpc_hook(Some(Arc::new(hook)));
    }
    let mut consumer = builder.build();
    consumer.subscribe(spec.topic.as_str(), "*").await.map_err(|e| e.to_string())?;
    if spec.ordered {
        consumer.register_message_listener_orderly(Shared(listener.clone()));
    } else {
        consumer.register_message_listener_concurrently(Shared(listener.clone()));
    }
    consumer.start().await.map_err(|e| e.to_string())?;
    Ok(consumer)
}

/// The one listener, registered with each consumer built for the source.
struct Shared(Arc<Listener>);

struct Listener {
    emitter: Arc<Emitter>,
    /// Spate's runtime, where deliveries run.
    handle: tokio::runtime::Handle,
    stop: watch::Receiver<bool>,
    source: String,
}

impl Listener {
    /// True once every message was accepted by the sink or the dead-letter sink.
    fn deliver(&self, msgs: &[&MessageExt]) -> bool {
        msgs.iter().all(|m| {
            let ev = to_event(&self.source, m);
            self.handle.block_on(self.emitter.emit_until_accepted(ev, &self.stop))
        })
    }
}

impl MessageListenerConcurrently for Shared {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeConcurrentlyStatus> {
        Ok(if self.0.deliver(msgs) {
            ConsumeConcurrentlyStatus::ConsumeSuccess
        } else {
            ConsumeConcurrentlyStatus::ReconsumeLater
        })
    }
}

impl MessageListenerOrderly for Shared {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &mut ConsumeOrderlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeOrderlyStatus> {
        Ok(if self.0.deliver(msgs) {
            ConsumeOrderlyStatus::Success
        } else {
            ConsumeOrderlyStatus::SuspendCurrentQueueAMoment
        })
    }
}

/// RocketMQ's own properties (upper case) are not user properties.
fn user_property(k: &str) -> Option<String> {
    if k.chars().any(|c| c.is_ascii_lowercase()) {
        let name: String = k.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
        (!name.is_empty() && name.len() <= 20 && spate_core::rules::check_attribute_name(&name).is_ok()).then_some(name)
    } else {
        None
    }
}

/// Type `dev.knative.sources.rocketmq`, id the message id, source `…/rocketmqsources/<name>#<topic>`;
/// keys, tags and user properties as extensions.
pub(crate) fn to_event(source: &str, m: &MessageExt) -> CloudEvent {
    let id = m.msg_id().to_string();
    let mut ev =
        CloudEvent::new(if id.is_empty() { uuid() } else { id }, source.to_string(), "dev.knative.sources.rocketmq");
    ev.subject = Some(format!("queue:{}#{}", m.queue_id(), m.queue_offset()));
    let born = m.born_timestamp();
    if born > 0 {
        ev.time = Some(spate_core::rules::format_rfc3339(born / 1000, ((born % 1000) * 1_000_000) as u32));
    }
    ev.data = m.body().or(Some(Bytes::new()));
    if let Some(t) = m.get_tags() {
        ev.set_extension("tags", ExtValue::String(t.to_string()));
    }
    for (k, v) in m.properties() {
        if k.as_str() == "KEYS" {
            ev.set_extension("keys", ExtValue::String(v.to_string()));
        } else if let Some(name) = user_property(k.as_str())
            && !["id", "source", "type", "specversion", "subject", "time", "data", "datacontenttype", "dataschema"]
                .contains(&name.as_str())
        {
            ev.set_extension(&name, ExtValue::String(v.to_string()));
        }
    }
    ev
}
