//! The seam between the source manager and each source kind's module.
//!
//! A source kind's module exports one [`StartFn`]; [`crate::DRIVERS`] maps the
//! kind's name to it. The function reads its typed spec from the resolved
//! source, spawns its tasks, and leaves behind, if it wants, a [`Started`]
//! that reports its status and cleans up when the source stops. The manager
//! ([`crate::Sources`]) never matches on a kind.

use std::sync::Arc;

use serde_json::{Map, Value};
use spate_api::Condition;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::emit::Emitter;
use crate::{BoxFut, ResolvedSource, Sources};

/// Starts one source.
pub type StartFn = fn(&mut Start<'_>);

/// What a driver gets to start one source.
pub struct Start<'a> {
    pub(crate) sources: &'a Sources,
    /// `(namespace, name)`.
    pub namespace: &'a str,
    pub name: &'a str,
    pub resolved: &'a ResolvedSource,
    /// How the source emits (its sink, dead-letter sink, retries, counters).
    pub emitter: Arc<Emitter>,
    /// Flips to true when the source must stop.
    pub stop: watch::Receiver<bool>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
    pub(crate) parts: Vec<Arc<dyn Started>>,
    /// (reason, message) when the source cannot run at all.
    pub(crate) problem: Option<(String, String)>,
}

impl Start<'_> {
    /// Runs `task` until the source stops (it must end when `stop` flips).
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }
    /// Reports status and takes the stop (see [`Started`]).
    pub fn keep(&mut self, part: Arc<dyn Started>) {
        self.parts.push(part);
    }
    /// The source cannot run: `Deployed` (hence `Ready`) is false with this reason.
    pub fn fail(&mut self, reason: &str, message: impl Into<String>) {
        self.problem = Some((reason.to_string(), message.into()));
    }
    /// A Secret value the source references (resolved before start).
    pub fn secret(&self, r: &spate_api::SecretKeyRef) -> Option<String> {
        self.resolved.secrets.get(r)?.as_ref().ok().map(|v| String::from_utf8_lossy(v).into_owned())
    }
    /// The typed spec of this source's kind.
    pub fn spec<T: spate_api::SourceParams>(&self) -> Option<&T> {
        self.resolved.config.spec.get::<T>()
    }
    /// `<plural>/<namespace>/<name>`: the metric label and lease prefix.
    pub fn label(&self) -> &str {
        &self.emitter.label
    }
}

/// What a running source reports and does when it stops. Every method has a default.
pub trait Started: Send + Sync {
    /// (reason, message) while it cannot do its work: `Deployed` is false.
    fn not_deployed(&self) -> Option<(String, String)> {
        None
    }
    /// Conditions besides SinkProvided, SecretsProvided and Deployed.
    fn conditions(&self) -> Vec<Condition> {
        vec![]
    }
    /// Status fields (`status.<key>`) and counters (`status.spate.<key>`).
    fn fields(&self, _status: &mut Map<String, Value>, _counters: &mut Map<String, Value>) {}
    /// After its tasks stopped; `deleted`: the source is gone or changed.
    fn finish(&self, _deleted: bool) -> BoxFut<'_, ()> {
        Box::pin(async {})
    }
}

/// The status of a source whose upstream says how much waits (`status.spate.lag`, and the
/// `spate_source_lag` gauge): Kafka's end minus committed offsets, a RabbitMQ queue's ready
/// messages, an SQS queue's visible messages.
pub(crate) struct Lag(pub Arc<crate::SourceStats>);

impl Lag {
    pub(crate) fn set(stats: &crate::SourceStats, label: &str, lag: u64) {
        stats.lag.store(lag, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("spate_source_lag", "source" => label.to_string()).set(lag as f64);
    }
}

impl Started for Lag {
    fn fields(&self, _status: &mut Map<String, Value>, counters: &mut Map<String, Value>) {
        counters.insert("lag".into(), serde_json::json!(self.0.lag.load(std::sync::atomic::Ordering::Relaxed)));
    }
}

/// Whether a source reaches its upstream (broker, stream, bucket, queue): the last failure to
/// connect or poll, cleared by the next success. While set, `Deployed` (hence `Ready`) is false
/// with reason `UpstreamUnavailable`, so a source whose server is down says so.
#[derive(Default)]
pub(crate) struct Upstream(std::sync::Mutex<Option<String>>);

impl Upstream {
    pub(crate) fn failed(&self, why: impl Into<String>) {
        *self.0.lock().expect("upstream") = Some(why.into());
    }
    pub(crate) fn ok(&self) {
        *self.0.lock().expect("upstream") = None;
    }
}

impl Started for Upstream {
    fn not_deployed(&self) -> Option<(String, String)> {
        self.0.lock().expect("upstream").clone().map(|m| ("UpstreamUnavailable".to_string(), m))
    }
}
