use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use spate_api::{BrokerClass, Engine};
use spate_api::{BrokerConfig, DeliverySpec, Kind, TriggerConfig};
use spate_core::Destination;
use spate_core::destination::ResolveError;
use spate_log::{StreamBackend, StreamSettings};

use crate::broker::{Broker, Storage};
use crate::desired::{Addressables, Condition, Desired, ResourceStatus};
use crate::trigger::{ReplyPlan, TriggerStats, WorkerPlan};
use crate::workers::Source;
use crate::{Eventing, EventingConfig, broker_log_name};

type Key = (String, String);

/// The channel backing a channel-based broker, as Knative names it: `<broker>-kne-trigger`.
pub fn broker_channel_name(broker: &str) -> String {
    format!("{broker}-kne-trigger")
}

impl Eventing {
    /// Adds the shared engine that `NatsJetStreamBroker` brokers live on.
    /// Listens to every event brokers and channels store from now on.
    pub fn tap(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<crate::tap::Tapped>> {
        self.tap.subscribe()
    }

    /// The backend of `RabbitMQBroker` brokers.
    pub fn with_rabbit(mut self, rabbit: Arc<dyn StreamBackend>) -> Self {
        self.rabbit = Some(rabbit);
        self
    }

    /// The backend of `Kafka` brokers and KafkaChannels.
    pub fn with_kafka(mut self, kafka: Arc<dyn StreamBackend>) -> Self {
        self.kafka = Some(kafka);
        self
    }

    /// The shared engine a stream-backed broker class runs on.
    fn engine_backend(&self, engine: Engine) -> Option<&Arc<dyn StreamBackend>> {
        match engine {
            Engine::Nats => self.streams.as_ref(),
            Engine::RabbitMq => self.rabbit.as_ref(),
            Engine::Kafka => self.kafka.as_ref(),
            Engine::EmbeddedLog => None,
        }
    }

    pub fn with_streams(mut self, streams: Arc<dyn StreamBackend>) -> Self {
        self.streams = Some(streams);
        self
    }

    pub fn config(&self) -> &EventingConfig {
        &self.config
    }

    /// The running broker for the ingress path.
    pub fn broker(&self, namespace: &str, name: &str) -> Option<Arc<Broker>> {
        self.brokers.read().expect("brokers lock").get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Why a running broker's or channel's storage cannot be used right now
    /// (a shared engine that is down), for live statuses.
    pub fn storage_problem(&self, kind: Kind, namespace: &str, name: &str) -> Option<String> {
        match kind {
            Kind::Broker => self.broker(namespace, name)?.stream()?.problem(),
            k if k.is_channel() => match &self.channel(namespace, name)?.store {
                crate::messaging::ChannelStore::Stream(s) => s.problem(),
                crate::messaging::ChannelStore::Log(_) => None,
            },
            _ => None,
        }
    }

    pub fn broker_address(&self, namespace: &str, name: &str) -> String {
        format!("{}/{namespace}/{name}", self.config.base_url.trim_end_matches('/'))
    }

    /// Live counters for a trigger, if its worker runs.
    pub async fn trigger_stats(&self, namespace: &str, name: &str) -> Option<Arc<TriggerStats>> {
        self.triggers.lock().await.stats(&(namespace.to_string(), name.to_string()))
    }

    /// The event types seen flowing through each Broker and Channel (kind
    /// `Broker` or `Channel`; the caller knows which channel kind a name is).
    pub fn event_types(&self) -> Vec<crate::event_types::SeenType> {
        self.tap.types.list()
    }

    /// A trigger's backlog: events stored in its broker that it has not finished with.
    pub async fn trigger_backlog(&self, namespace: &str, name: &str) -> Option<u64> {
        self.triggers.lock().await.backlog_of(&(namespace.to_string(), name.to_string())).await
    }

    pub fn channel_address(&self, namespace: &str, name: &str) -> String {
        format!("{}/channels/{namespace}/{name}", self.config.base_url.trim_end_matches('/'))
    }

    /// Resolves a Destination to a URL against the desired addressables.
    pub(crate) fn resolve(&self, dest: &Destination, names: &Addressables) -> Result<String, ResolveError> {
        match (&dest.kref, &dest.uri) {
            (Some(r), uri) => {
                let key = (r.namespace.clone(), r.name.clone());
                let (kind, namespace, name) = (r.kind.clone(), r.namespace.clone(), r.name.clone());
                let base = match Kind::from_ref(&r.kind, &r.api_version) {
                    Some(Kind::Broker) if names.brokers.contains(&key) => self.broker_address(&r.namespace, &r.name),
                    Some(k) if k.is_channel() && names.channels.contains(&key) => {
                        self.channel_address(&r.namespace, &r.name)
                    }
                    Some(Kind::Sequence) if names.sequences.contains(&key) => {
                        self.channel_address(&r.namespace, &crate::messaging::sequence_channel(&r.name, 0))
                    }
                    Some(Kind::Parallel) if names.parallels.contains(&key) => {
                        self.channel_address(&r.namespace, &crate::messaging::parallel_ingress(&r.name))
                    }
                    Some(Kind::Service) if names.services.contains_key(&key) => names.services[&key].clone(),
                    Some(Kind::KafkaSink) if names.kafka_sinks.contains_key(&key) => names.kafka_sinks[&key].clone(),
                    // Addressable, but no such object is defined.
                    Some(k) if k.addressable() => return Err(ResolveError::Missing { kind, namespace, name }),
                    Some(_) | None => {
                        let api_version = r.api_version.clone();
                        return Err(ResolveError::NotAddressable { kind, namespace, name, api_version });
                    }
                };
                Ok(match uri {
                    Some(u) => Destination::join(&base, u),
                    None => base,
                })
            }
            (None, Some(u)) => Ok(u.clone()),
            (None, None) => Err(ResolveError::Empty),
        }
    }

    /// A resolver of Destinations (sources' sinks, say) against what `desired` defines,
    /// working as every trigger's subscriber is resolved.
    pub fn resolver(&self, desired: &Desired) -> impl Fn(&Destination) -> Result<String, ResolveError> + '_ {
        let expanded = crate::messaging::expand(desired);
        let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        let names = Addressables {
            brokers: desired.brokers.iter().map(|b| key(&b.namespace, &b.name)).collect(),
            channels: expanded.channels.iter().map(|c| key(&c.namespace, &c.name)).collect(),
            sequences: desired.sequences.iter().map(|s| key(&s.namespace, &s.name)).collect(),
            parallels: desired.parallels.iter().map(|p| key(&p.namespace, &p.name)).collect(),
            services: desired.services.clone(),
            kafka_sinks: desired.kafka_sinks.clone(),
        };
        move |dest| self.resolve(dest, &names)
    }

    /// Brings the running parts in line with `desired` (by diff: unchanged
    /// workers keep running) and returns every resource's status.
    pub async fn reconcile(&self, desired: &Desired) -> Vec<ResourceStatus> {
        let mut statuses = vec![];
        let wanted: HashSet<Key> = desired.brokers.iter().map(|b| (b.namespace.clone(), b.name.clone())).collect();
        let expanded = crate::messaging::expand(desired);
        let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        let names = Addressables {
            brokers: wanted.clone(),
            channels: expanded.channels.iter().map(|c| key(&c.namespace, &c.name)).collect(),
            sequences: desired.sequences.iter().map(|s| key(&s.namespace, &s.name)).collect(),
            parallels: desired.parallels.iter().map(|p| key(&p.namespace, &p.name)).collect(),
            services: desired.services.clone(),
            kafka_sinks: desired.kafka_sinks.clone(),
        };
        self.reconcile_brokers(desired, &wanted, &names, &mut statuses).await;
        self.reconcile_triggers(desired, &names, &mut statuses).await;
        self.reconcile_messaging(desired, &expanded, &names, &mut statuses).await;
        statuses
    }

    /// Stops the triggers of brokers that are gone and deletes their storage;
    /// opens (or keeps) every desired broker on the storage its class names.
    async fn reconcile_brokers(
        &self,
        desired: &Desired,
        wanted: &HashSet<Key>,
        names: &Addressables,
        statuses: &mut Vec<ResourceStatus>,
    ) {
        let gone: Vec<Key> =
            self.brokers.read().expect("brokers lock").keys().filter(|k| !wanted.contains(*k)).cloned().collect();
        for key in gone {
            self.stop_triggers_of(&key).await;
            let Some(broker) = self.brokers.write().expect("brokers lock").remove(&key) else { continue };
            self.tap.types.forget(&key.0, &key.1, "Broker");
            let log_name = broker_log_name(&key.0, &key.1);
            let removed = match (&broker.storage, self.engine_backend(broker.engine)) {
                (Storage::Log { .. }, _) => self.backend.remove(&log_name).await,
                (Storage::Stream(_), Some(streams)) => streams.remove(&log_name).await,
                (Storage::Stream(_), None) => Ok(()),
            };
            if let Err(e) = removed {
                tracing::error!(broker = %format!("{}/{}", key.0, key.1), error = %e, "could not delete the broker's storage");
            }
        }
        for b in &desired.brokers {
            let address = self.broker_address(&b.namespace, &b.name);
            let mut conds = vec![];
            match self.open_broker(b, &address, &desired.config_maps).await {
                Ok(()) => {
                    conds.push(Condition::ok("IngressReady"));
                    conds.push(Condition::ok("Addressable"));
                }
                Err((reason, e)) => conds.push(Condition::fail("IngressReady", reason, e)),
            }
            let mut dls_uri = None;
            if let Some(dls) = b.delivery.as_ref().and_then(|d| d.dead_letter_sink.as_ref()) {
                match self.resolve(dls, names) {
                    Ok(u) => {
                        dls_uri = Some(u);
                        conds.push(Condition::ok("DeadLetterSinkResolved"));
                    }
                    Err(e) => conds.push(Condition::fail("DeadLetterSinkResolved", "Unresolved", e.to_string())),
                }
            }
            let mut st = ResourceStatus::new(Kind::Broker, &b.namespace, &b.name, conds);
            st.address = Some(address);
            st.dead_letter_sink_uri = dls_uri;
            statuses.push(st);
        }
    }

    /// The broker's class, or the server's default class; `None` for a class Spate does not run
    /// (admission refuses those, so only a record from another version can carry one).
    pub fn broker_class(&self, b: &BrokerConfig) -> Option<BrokerClass> {
        match &b.class {
            Some(name) => BrokerClass::parse(name),
            None => Some(self.config.default_broker_class),
        }
    }

    /// Runs `b` on its class's storage unless an equal broker already runs.
    async fn open_broker(
        &self,
        b: &BrokerConfig,
        address: &str,
        config_maps: &HashMap<Key, BTreeMap<String, String>>,
    ) -> Result<(), (&'static str, String)> {
        let existing = self.broker(&b.namespace, &b.name);
        let (engine, settings) = self.broker_engine(b, config_maps)?;
        if existing.as_ref().is_some_and(|x| x.config == *b && x.settings == settings && x.engine == engine) {
            return Ok(());
        }
        let log_name = broker_log_name(&b.namespace, &b.name);
        let broker = match engine {
            Engine::EmbeddedLog => {
                let log = match existing.as_ref().and_then(|x| x.feed().map(|f| f.log.clone())) {
                    Some(log) => log,
                    None => self.backend.open(&log_name).await.map_err(|e| ("StorageUnavailable", e.to_string()))?,
                };
                Broker::new(b.clone(), log, address.to_string()).with_tap(self.tap.clone())
            }
            Engine::Nats | Engine::RabbitMq | Engine::Kafka => {
                let Some(streams) = self.engine_backend(engine) else {
                    return Err(("BackendNotConfigured", format!("this server has no backend for {engine:?}")));
                };
                let same = existing.as_ref().filter(|x| x.settings == settings && x.engine == engine);
                let stream = match same.and_then(|x| x.stream()) {
                    Some(s) => s.clone(),
                    None => streams
                        .open_with(&log_name, &settings)
                        .await
                        .map_err(|e| ("StorageUnavailable", e.to_string()))?,
                };
                Broker::on_stream(b.clone(), stream, address.to_string())
                    .with_settings(settings)
                    .with_engine(engine)
                    .with_tap(self.tap.clone())
            }
        };
        self.brokers.write().expect("brokers lock").insert((b.namespace.clone(), b.name.clone()), Arc::new(broker));
        Ok(())
    }

    /// The channels backing channel-based brokers on a shared engine (from a channel
    /// template), as children of their brokers (`<broker>-kne-trigger`).
    pub fn broker_children(&self) -> Vec<crate::FlowChild> {
        let brokers = self.brokers.read().expect("brokers lock");
        brokers
            .values()
            .filter(|b| {
                b.engine != Engine::EmbeddedLog && self.broker_class(&b.config) == Some(BrokerClass::MtChannelBased)
            })
            .map(|b| crate::FlowChild {
                kind: if b.engine == Engine::Kafka { Kind::KafkaChannel } else { Kind::NatsJetStreamChannel },
                namespace: b.config.namespace.clone(),
                name: broker_channel_name(&b.config.name),
                owner_kind: Kind::Broker,
                owner: b.config.name.clone(),
                channel: None,
            })
            .collect()
    }

    /// The engine a broker runs on, and what it opens it with: its class's engine, or, for a
    /// channel-based broker (MTChannelBasedBroker) whose `spec.config` ConfigMap holds a
    /// `channel-template-spec`, the engine of that channel kind (as Knative backs such a broker
    /// with a channel of the template's kind).
    fn broker_engine(
        &self,
        b: &BrokerConfig,
        config_maps: &HashMap<Key, BTreeMap<String, String>>,
    ) -> Result<(Engine, StreamSettings), (&'static str, String)> {
        let Some(class) = self.broker_class(b) else {
            let other = b.class.as_deref().unwrap_or_default();
            return Err((
                "ClassNotSupported",
                format!(
                    "broker class {other} is not implemented (MTChannelBasedBroker, NatsJetStreamBroker, Kafka and RabbitMQBroker are)"
                ),
            ));
        };
        if class != BrokerClass::MtChannelBased {
            return Ok((class.engine(), self.broker_settings(b, config_maps)?));
        }
        // A missing ConfigMap (Knative's defaults, `config-br-default-channel`, are not applied
        // here) or one without a template: the embedded log, as an InMemoryChannel-backed broker.
        let template = b
            .config
            .as_ref()
            .filter(|r| r.kind == "ConfigMap")
            .and_then(|r| config_maps.get(&(r.namespace.clone(), r.name.clone())))
            .and_then(|data| data.get(spate_api::CHANNEL_TEMPLATE_KEY));
        let Some(text) = template else { return Ok((Engine::EmbeddedLog, StreamSettings::default())) };
        let t = spate_api::channel_template(text).map_err(|e| ("ChannelTemplateNotSupported", e))?;
        let mut s = StreamSettings::default();
        let engine = match t.kind {
            Kind::KafkaChannel => {
                let channel = broker_channel_name(&b.name);
                s.topic = Some(spate_log::kafka::channel_topic(&b.namespace, &channel));
                let number = |field: &str| match t.spec.get(field) {
                    None => Ok(None),
                    Some(v) => {
                        spate_log::kafka::topic_number(&format!("channel-template-spec spec.{field}"), &v.to_string())
                            .map(Some)
                            .map_err(|e| ("ChannelTemplateNotSupported", e))
                    }
                };
                s.partitions = number("numPartitions")?;
                s.replication_factor = number("replicationFactor")?;
                Engine::Kafka
            }
            Kind::NatsJetStreamChannel => Engine::Nats,
            _ => Engine::EmbeddedLog,
        };
        Ok((engine, s))
    }

    /// What a `Kafka` broker's engine reads: its ConfigMap's data (`spec.config`:
    /// `bootstrap.servers`, `default.topic.partitions`, `default.topic.replication.factor`,
    /// `default.topic.config.retention.ms`) and its topic, `knative-broker-<namespace>-<name>`
    /// or the `kafka.eventing.knative.dev/external.topic`. Other classes: none.
    fn broker_settings(
        &self,
        b: &BrokerConfig,
        config_maps: &HashMap<Key, BTreeMap<String, String>>,
    ) -> Result<StreamSettings, (&'static str, String)> {
        use spate_log::kafka::{keys, retention_ms, topic_number};
        let mut s = StreamSettings::default();
        if self.broker_class(b) != Some(BrokerClass::Kafka) {
            return Ok(s);
        }
        if let Some(r) = &b.config {
            if r.kind != "ConfigMap" {
                return Err((
                    "ConfigNotSupported",
                    format!("spec.config: a Kafka broker reads a ConfigMap, not a {}", r.kind),
                ));
            }
            let Some(data) = config_maps.get(&(r.namespace.clone(), r.name.clone())) else {
                return Err((
                    "ConfigMapNotFound",
                    format!("ConfigMap {}/{} (spec.config) does not exist", r.namespace, r.name),
                ));
            };
            // Knative's keys, bounded here; a wrong value names its key and the ConfigMap.
            let invalid =
                |e: String| ("ConfigInvalid", format!("ConfigMap {}/{} (spec.config): {e}", r.namespace, r.name));
            for (k, v) in data {
                match k.as_str() {
                    keys::BOOTSTRAP_SERVERS => s.bootstrap_servers = Some(v.clone()),
                    keys::PARTITIONS => s.partitions = Some(topic_number(k, v).map_err(invalid)?),
                    keys::REPLICATION_FACTOR => s.replication_factor = Some(topic_number(k, v).map_err(invalid)?),
                    keys::RETENTION_MS | "retention.ms" => s.retention_ms = Some(retention_ms(k, v).map_err(invalid)?),
                    _ => {}
                }
            }
        }
        match &b.external_topic {
            Some(t) => {
                s.topic = Some(t.clone());
                s.external = true;
            }
            None => s.topic = Some(spate_log::kafka::broker_topic(&b.namespace, &b.name)),
        }
        Ok(s)
    }

    /// Stops every trigger reading broker `key` (it is gone).
    async fn stop_triggers_of(&self, key: &Key) {
        let workers = self.triggers.lock().await.take_source(&key.0, &key.1);
        for w in workers {
            w.stop().await;
        }
    }

    /// Deleted triggers stop everywhere and their consumers are removed;
    /// every desired trigger runs on its broker's storage.
    async fn reconcile_triggers(&self, desired: &Desired, names: &Addressables, statuses: &mut Vec<ResourceStatus>) {
        let mut triggers = self.triggers.lock().await;
        let desired_triggers: HashSet<Key> =
            desired.triggers.iter().map(|t| (t.namespace.clone(), t.name.clone())).collect();
        triggers.remove_except(&desired_triggers).await;
        for t in &desired.triggers {
            let key = (t.namespace.clone(), t.name.clone());
            let (plan, mut st) = self.plan_trigger(t, names);
            match (plan, self.broker(&t.namespace, &t.broker)) {
                (Some(plan), Some(broker)) => {
                    let source = match &broker.storage {
                        Storage::Log { feed, .. } => Source::Log(feed),
                        Storage::Stream(stream) => Source::Stream(stream),
                    };
                    let b = Some(broker.clone());
                    triggers.place(key, plan, source, b, &self.dispatcher, self.config.ack_wait).await;
                }
                _ => {
                    triggers.stop(&key).await;
                    if st.ready() {
                        st = ResourceStatus::new(
                            Kind::Trigger,
                            &t.namespace,
                            &t.name,
                            vec![Condition::fail("BrokerReady", "BrokerNotReady", "the broker is not running")],
                        );
                    }
                }
            }
            statuses.push(st);
        }
    }

    fn plan_trigger(&self, t: &TriggerConfig, names: &Addressables) -> (Option<WorkerPlan>, ResourceStatus) {
        let mut conds = vec![];
        let broker_cfg = if names.brokers.contains(&(t.namespace.clone(), t.broker.clone())) {
            conds.push(Condition::ok("BrokerReady"));
            self.broker(&t.namespace, &t.broker).map(|b| b.config.clone())
        } else {
            conds.push(Condition::fail(
                "BrokerReady",
                "BrokerDoesNotExist",
                format!("Broker {}/{} does not exist", t.namespace, t.broker),
            ));
            None
        };
        let subscriber = self.resolve(&t.subscriber, names);
        match &subscriber {
            Ok(_) => conds.push(Condition::ok("SubscriberResolved")),
            Err(e) => conds.push(Condition::fail("SubscriberResolved", "Unresolved", e.to_string())),
        }
        // A Trigger's delivery spec replaces its Broker's; the dead-letter sink falls back to the Broker's.
        let broker_delivery = broker_cfg.as_ref().and_then(|b| b.delivery.clone());
        let spec: DeliverySpec =
            t.delivery.clone().or(broker_delivery.clone()).unwrap_or_else(|| self.config.default_delivery.clone());
        let dls_dest = t
            .delivery
            .as_ref()
            .and_then(|d| d.dead_letter_sink.clone())
            .or_else(|| broker_delivery.and_then(|d| d.dead_letter_sink));
        let dls = dls_dest.as_ref().map(|d| self.resolve(d, names));
        match &dls {
            Some(Ok(_)) => conds.push(Condition::ok("DeadLetterSinkResolved")),
            Some(Err(e)) => conds.push(Condition::fail("DeadLetterSinkResolved", "Unresolved", e.to_string())),
            None => {}
        }
        let mut st = ResourceStatus::new(Kind::Trigger, &t.namespace, &t.name, conds);
        st.subscriber_uri = subscriber.as_ref().ok().cloned();
        st.dead_letter_sink_uri = dls.as_ref().and_then(|r| r.as_ref().ok().cloned());
        let plan = match (st.ready(), subscriber, dls) {
            (true, Ok(subscriber_url), dls) => Some(WorkerPlan {
                kind: "trigger",
                namespace: t.namespace.clone(),
                name: t.name.clone(),
                source: t.broker.clone(),
                filter: t.filter.clone(),
                reply: ReplyPlan::Broker,
                subscriber_url: subscriber_url.into(),
                dead_letter_url: dls.and_then(Result::ok).map(Into::into),
                policy: spec.retry_policy(self.config.default_delay()),
                format: spec.format.unwrap_or_default(),
                max_in_flight: if t.ordered { 1 } else { t.max_in_flight.unwrap_or(self.config.max_in_flight) },
            }),
            _ => None,
        };
        (plan, st)
    }

    /// Events not yet delivered by the triggers and subscriptions whose
    /// subscriber URL starts with `address` (a Service's backlog).
    pub async fn backlog_for(&self, address: &str) -> u64 {
        let mut total = 0;
        for workers in [&self.triggers, &self.subscriptions] {
            total += workers.lock().await.backlog_for(address).await;
        }
        total
    }

    /// Stops every worker (in-flight deliveries stay uncommitted).
    pub async fn shutdown(&self) {
        for (_, d) in self.draining.lock().await.drain() {
            d.cancel().await;
        }
        for workers in [&self.triggers, &self.subscriptions] {
            workers.lock().await.stop_all().await;
        }
    }
}
