//! RabbitmqSource (`sources.knative.dev/v1alpha1`, eventing-rabbitmq's shape):
//! a queue bound to an exchange, consumed with acknowledgements after the sink accepted.

use serde_json::{Map, Value};

use super::{CompiledSource, SecretKeyRef, SourceCtx, SourceKindDef, SourceParams, SourceSpec, delivery_spec};
use crate::walk::{Walker, join};

pub(super) static RABBITMQ: SourceKindDef = SourceKindDef {
    name: "RabbitmqSource",
    group: "sources.knative.dev",
    version: "v1alpha1",
    plural: "rabbitmqsources",
    also_accepts: &[],
    fields: &["rabbitmqClusterReference", "rabbitmqResourcesConfig", "delivery", "serviceAccountName"],
    compile,
};

/// Where the broker is: the keys of `rabbitmqClusterReference.connectionSecret`.
#[derive(Debug, Clone, PartialEq)]
pub struct RabbitmqConnection {
    /// `uri`: an `amqp://` URL, or the management URL whose host is used.
    pub uri: SecretKeyRef,
    pub username: SecretKeyRef,
    pub password: SecretKeyRef,
    pub port: SecretKeyRef,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RabbitmqSourceSpec {
    pub connection: RabbitmqConnection,
    pub exchange: String,
    pub queue: String,
    /// Messages in flight at once; 1 keeps the queue's order.
    pub parallelism: u32,
    /// The exchange and queue exist already: declare nothing.
    pub predeclared: bool,
    pub vhost: String,
    /// `/apis/v1/namespaces/<ns>/rabbitmqsources/<name>#<queue>`.
    pub event_source: String,
}

impl SourceParams for RabbitmqSourceSpec {
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        // eventing-rabbitmq's connection Secret: `uri`, `username` and `password` (the RabbitMQ
        // topology operator's convention); `port` is optional and not resolved.
        vec![&self.connection.uri, &self.connection.username, &self.connection.password]
    }
}

fn compile(w: &mut Walker, m: &Map<String, Value>, cx: &SourceCtx<'_>) -> Option<CompiledSource> {
    let delivery = delivery_spec(w, m, cx.namespace);
    let secret = connection_secret(w, m);
    let mut rc = RabbitmqSourceSpec {
        connection: RabbitmqConnection {
            uri: SecretKeyRef { name: String::new(), key: "uri".into() },
            username: SecretKeyRef { name: String::new(), key: "username".into() },
            password: SecretKeyRef { name: String::new(), key: "password".into() },
            port: SecretKeyRef { name: String::new(), key: "port".into() },
        },
        exchange: String::new(),
        queue: String::new(),
        parallelism: 1,
        predeclared: false,
        vhost: "/".into(),
        event_source: String::new(),
    };
    let p = "spec.rabbitmqResourcesConfig";
    let allowed = ["exchangeName", "queueName", "parallelism", "predeclared", "vhost"];
    match m.get("rabbitmqResourcesConfig").filter(|v| !v.is_null()) {
        None => w.error(p, "is required (exchangeName and queueName)"),
        Some(v) => {
            if let Some(r) = w.object(v, p, &allowed) {
                rc.exchange = w.req_str(r, "exchangeName", p).unwrap_or_default().to_string();
                rc.queue = w.req_str(r, "queueName", p).unwrap_or_default().to_string();
                rc.parallelism = w.opt_u32(r, "parallelism", p).unwrap_or(1);
                if !(1..=1000).contains(&rc.parallelism) {
                    w.error(&join(p, "parallelism"), format!("must be from 1 to 1000, got {}", rc.parallelism));
                }
                rc.predeclared = r.get("predeclared").and_then(Value::as_bool).unwrap_or(false);
                rc.vhost = w.opt_str(r, "vhost", p).unwrap_or("/").to_string();
            }
        }
    }
    let secret = secret?;
    for r in [&mut rc.connection.uri, &mut rc.connection.username, &mut rc.connection.password, &mut rc.connection.port]
    {
        r.name = secret.clone();
    }
    rc.event_source = format!("{}#{}", super::event_source(cx), rc.queue);
    (!rc.exchange.is_empty() && !rc.queue.is_empty()).then(|| CompiledSource { spec: SourceSpec::new(rc), delivery })
}

/// `rabbitmqClusterReference.connectionSecret.name`: a Secret with `uri` (and
/// optionally `username`, `password`, `port`). A RabbitmqCluster by name needs
/// the RabbitMQ operator, which has no counterpart here.
fn connection_secret(w: &mut Walker, m: &Map<String, Value>) -> Option<String> {
    let p = "spec.rabbitmqClusterReference";
    let Some(v) = m.get("rabbitmqClusterReference").filter(|v| !v.is_null()) else {
        w.error(p, "is required (connectionSecret: {name: a Secret with the broker's uri})");
        return None;
    };
    let r = w.object(v, p, &["name", "namespace", "connectionSecret"])?;
    match r.get("connectionSecret").filter(|v| !v.is_null()) {
        Some(s) => {
            let sp = join(p, "connectionSecret");
            let sm = w.object(s, &sp, &["name"])?;
            w.req_str(sm, "name", &sp).map(str::to_string)
        }
        None => {
            w.error(
                &join(p, "connectionSecret"),
                "is required: Spate has no RabbitMQ operator to look a cluster up by name; give a Secret with the broker's uri",
            );
            None
        }
    }
}
