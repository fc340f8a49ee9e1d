//! KafkaSink at run time: one idempotent producer per sink (`acks=all`), the
//! topic created if absent, and `produce`, which resolves once Kafka has
//! acknowledged the record. Lives beside the KafkaSource because both speak
//! Kafka with the same client configuration (Knative's Secret keys for TLS and
//! SASL).
//!
//! Records follow the CloudEvents Kafka binding: `binary` puts attributes in
//! `ce_` headers and the data in the value; `structured` puts the JSON event
//! in the value with `content-type: application/cloudevents+json`. The key is
//! the `partitionkey` extension when the event has one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use spate_api::{KafkaContentMode, KafkaSinkConfig};
use spate_core::{CloudEvent, kafka_binding};
use spate_log::kafka::Logged;

/// How long a record may wait for Kafka's acknowledgement before the request fails.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// A sink's settings and, when it names one, its auth Secret's data.
pub struct WantedSink {
    pub config: KafkaSinkConfig,
    /// `Err` says why the Secret cannot be used (missing, say).
    pub auth: Result<BTreeMap<String, Vec<u8>>, String>,
}

/// What a sink's status says.
pub struct SinkStatus {
    pub namespace: String,
    pub name: String,
    /// `Ok` when the topic exists and the producer is ready; else the reason.
    pub ready: Result<(), (&'static str, String)>,
}

pub struct SinkRuntime {
    pub config: KafkaSinkConfig,
    auth: BTreeMap<String, Vec<u8>>,
    producer: FutureProducer<Logged>,
}

#[derive(Default)]
pub struct KafkaSinks {
    sinks: RwLock<HashMap<(String, String), Arc<SinkRuntime>>>,
}

fn client_config(c: &KafkaSinkConfig, auth: &BTreeMap<String, Vec<u8>>) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", c.bootstrap_servers.join(",")).set("client.id", "spate-kafkasink");
    let text = |k: &str| auth.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    if let Some(p) = text("protocol") {
        cc.set("security.protocol", p.to_ascii_lowercase());
    }
    if let Some(m) = text("sasl.mechanism") {
        cc.set("sasl.mechanisms", m);
    }
    if let Some(u) = text("user") {
        cc.set("sasl.username", u);
    }
    if let Some(p) = text("password") {
        cc.set("sasl.password", p);
    }
    if let Some(ca) = text("ca.crt") {
        cc.set("ssl.ca.pem", ca);
    }
    cc
}

impl KafkaSinks {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<SinkRuntime>> {
        self.sinks.read().expect("sinks lock").get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Runs exactly `wanted` (unchanged sinks keep their producer) and says how each is.
    pub async fn reconcile(&self, wanted: Vec<WantedSink>) -> Vec<SinkStatus> {
        let mut next = HashMap::new();
        let mut statuses = vec![];
        for w in wanted {
            let key = (w.config.namespace.clone(), w.config.name.clone());
            let status = |ready| SinkStatus { namespace: key.0.clone(), name: key.1.clone(), ready };
            let auth = match w.auth {
                Ok(a) => a,
                Err(e) => {
                    statuses.push(status(Err(("SecretNotFound", e))));
                    continue;
                }
            };
            let existing = self.get(&key.0, &key.1).filter(|s| s.config == w.config && s.auth == auth);
            let runtime = match existing {
                Some(r) => r,
                None => match start(w.config, auth).await {
                    Ok(r) => Arc::new(r),
                    Err(e) => {
                        statuses.push(status(Err(e)));
                        continue;
                    }
                },
            };
            next.insert(key.clone(), runtime);
            statuses.push(status(Ok(())));
        }
        *self.sinks.write().expect("sinks lock") = next;
        statuses
    }
}

/// Creates the producer and, if absent, the topic.
async fn start(
    config: KafkaSinkConfig,
    auth: BTreeMap<String, Vec<u8>>,
) -> Result<SinkRuntime, (&'static str, String)> {
    let cc = client_config(&config, &auth);
    let admin: AdminClient<Logged> =
        cc.create_with_context(Logged).map_err(|e| ("ProducerFailed", format!("cannot create a Kafka client: {e}")))?;
    let topic = NewTopic::new(&config.topic, config.num_partitions, TopicReplication::Fixed(config.replication_factor));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = tokio::time::timeout(Duration::from_secs(15), admin.create_topics([&topic], &opts))
        .await
        .map_err(|_| ("TopicNotReady", format!("Kafka at {} did not answer", config.bootstrap_servers.join(","))))?
        .map_err(|e| ("TopicNotReady", format!("cannot create topic {}: {e}", config.topic)))?;
    for r in created {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(("TopicNotReady", format!("cannot create topic {t}: {code}"))),
        }
    }
    let mut pc = cc.clone();
    pc.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", PRODUCE_TIMEOUT.as_millis().to_string())
        .set("linger.ms", "1");
    let producer: FutureProducer<Logged> = pc
        .create_with_context(Logged)
        .map_err(|e| ("ProducerFailed", format!("cannot create a Kafka producer: {e}")))?;
    Ok(SinkRuntime { config, auth, producer })
}

/// The record's headers and value for `ev`.
pub fn encode(ev: &CloudEvent, mode: KafkaContentMode) -> (OwnedHeaders, Vec<u8>) {
    let (headers, body) = match mode {
        KafkaContentMode::Structured => kafka_binding::encode_structured(ev),
        KafkaContentMode::Binary => kafka_binding::encode_binary(ev),
    };
    let owned =
        headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_slice()) }));
    (owned, body.to_vec())
}

impl SinkRuntime {
    /// Writes `ev` to the topic; `Ok` once Kafka acknowledged it (`acks=all`).
    pub async fn produce(&self, ev: &CloudEvent) -> Result<(), String> {
        let (headers, value) = encode(ev, self.config.content_mode);
        let key = ev.extension("partitionkey").map(|v| v.to_canonical().into_owned());
        let mut record = FutureRecord::to(&self.config.topic).payload(&value).headers(headers);
        if let Some(k) = &key {
            record = record.key(k.as_str());
        }
        self.producer.send(record, PRODUCE_TIMEOUT).await.map(|_| ()).map_err(|(e, _)| e.to_string())
    }
}
