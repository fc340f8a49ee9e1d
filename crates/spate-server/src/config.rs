//! The server's configuration: the flags of `spate serve` (the CLI flattens them into its command).

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Manifest files or directories to apply at start (YAML, multi-document).
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Where resources and event logs are stored.
    #[arg(long, default_value = "./spate-data", env = "SPATE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Data-plane address (broker ingress).
    #[arg(long, default_value = "127.0.0.1:8080", env = "SPATE_LISTEN")]
    pub listen: String,
    /// Admin API address.
    #[arg(long, default_value = "127.0.0.1:8081", env = "SPATE_ADMIN_LISTEN")]
    pub admin_listen: String,
    /// Largest accepted request body in bytes (at least 65536, CloudEvents' minimum).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_event_size: usize,
    /// When appends are acknowledged: `always` (after fdatasync, group commit), `interval:<ms>`, or `never`.
    #[arg(long, default_value = "always")]
    pub fsync: String,
    /// Default bound on events in flight per trigger.
    #[arg(long, default_value_t = 100)]
    pub max_in_flight: usize,
    /// Delete consumed log segments older than this many seconds (0 keeps them).
    #[arg(long, default_value_t = 86_400)]
    pub retention_seconds: u64,
    /// Delete the oldest consumed segments while a log is larger than this many bytes (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub retention_bytes: u64,
    /// Default delivery retries for brokers without a delivery spec (Knative's default is 10).
    #[arg(long, default_value_t = 10)]
    pub default_retry: u32,
    /// Default backoff delay in milliseconds (Knative's default is 200, exponential).
    #[arg(long, default_value_t = 200)]
    pub default_backoff_ms: u64,
    /// Publish Services' URLs host-based under this domain you control
    /// (`http://<name>.<namespace>.<domain>:<port>`). Default: path-based URLs
    /// (`http://<listen>/services/<namespace>/<name>`) that any HTTP client reaches
    /// without DNS; `<name>.<namespace>.localhost` still routes by Host.
    #[arg(long)]
    pub domain: Option<String>,
    /// Most instances of one revision when its max-scale is unset.
    #[arg(long, default_value_t = 20)]
    pub max_instances: u32,
    /// Requests that may wait per revision for a free instance before 503.
    #[arg(long, default_value_t = 1000)]
    pub activator_queue: usize,
    /// Seconds between SIGTERM and SIGKILL when an instance is stopped.
    #[arg(long, default_value_t = 10)]
    pub grace_seconds: u64,
    /// The data plane's URL as GitHub or GitLab reach it, for registering webhooks
    /// (default: the data plane's own address).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Seconds a client has to send a request's head (also the longest a
    /// keep-alive connection may wait idle for its next request).
    #[arg(long, default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Seconds a connection may move no byte in either direction (a stalled
    /// upload, a client that never reads) before it is closed.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout: u64,
    /// Bytes per second a request body must average once --header-read-timeout
    /// has passed since its head; a body trickled slower is cut (408) and its
    /// connection closed, so slow senders cannot hold connection slots. 0: off.
    #[arg(long, default_value_t = 1024)]
    pub min_body_rate: u64,
    /// Open connections the data plane accepts; beyond it, 503 with Retry-After.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Open connections the admin API accepts; beyond it, 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub admin_max_connections: usize,
    /// The class of Brokers without `eventing.knative.dev/broker.class`
    /// (MTChannelBasedBroker: the embedded log; NatsJetStreamBroker: NATS JetStream).
    #[arg(long, default_value = "MTChannelBasedBroker", env = "SPATE_DEFAULT_BROKER_CLASS")]
    pub default_broker_class: String,
    /// NATS server for NatsJetStreamBroker brokers and `--config-store nats` (dialled on first use).
    #[arg(long, default_value = "nats://127.0.0.1:4222", env = "SPATE_NATS_URL")]
    pub nats_url: String,
    /// RabbitMQ for `RabbitMQBroker` brokers (dialled on first use).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f", env = "SPATE_RABBITMQ_URL")]
    pub rabbitmq_url: String,
    /// Kafka brokers (`host:port,...`) for `Kafka` brokers and KafkaChannels whose
    /// configuration names none (a Broker's ConfigMap `bootstrap.servers` wins).
    #[arg(long, env = "SPATE_KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: Option<String>,
    /// PEM CA certificates that verify the NATS server (TLS is then required; use a `tls://` URL).
    #[arg(long, env = "SPATE_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// Prefixes NATS streams, consumers and KV buckets, RabbitMQ exchanges and queues, and (unless it
    /// is the default) Kafka topics and consumer groups, so several Spate clusters share one engine.
    #[arg(long, default_value = "spate", env = "SPATE_CLUSTER_NAME")]
    pub cluster_name: String,
    /// Where resources live: `file` (resources.json in the data dir) or `nats` (a KV bucket shared
    /// by every instance with the same --cluster-name).
    #[arg(long, default_value = "file", env = "SPATE_CONFIG_STORE")]
    pub config_store: String,
    /// Seconds a shared-engine message may be held without a sign of life before another
    /// instance gets it (how soon a crashed instance's in-flight events move on).
    #[arg(long, default_value_t = 30)]
    pub ack_wait_seconds: u64,
    /// File of admin API bearer tokens, one a line (`#` comments allowed). Required when the
    /// admin API listens on a non-loopback address.
    #[arg(long, env = "SPATE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Another name by which clients reach the admin API (`Host` header), besides its
    /// address, localhost and 127.0.0.1 (repeatable; checked when no token file is given).
    #[arg(long)]
    pub admin_host: Vec<String>,
    /// Key that seals Secret values in the shared NATS store (`--config-store nats`): 32 random
    /// bytes as 64 hex digits (`openssl rand -hex 32`), the same on every instance.
    #[arg(long, env = "SPATE_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Sender identity (Knative's OIDC): every addressable requires a bearer JWT from this issuer.
    #[arg(long, env = "SPATE_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// The issuer's signing keys: a JWKS file, or an http(s) URL serving one.
    #[arg(long, env = "SPATE_OIDC_JWKS")]
    pub oidc_jwks: Option<String>,
    /// Where no EventPolicy names an addressable (with --oidc-issuer): allow-all,
    /// allow-same-namespace (Knative's default) or deny-all.
    #[arg(long, default_value = "allow-same-namespace")]
    pub authorization_mode: String,
    /// Export OpenTelemetry spans (ingress, append, match, each delivery attempt, reply,
    /// dead letter) to this OTLP/HTTP collector, e.g. http://127.0.0.1:4318.
    #[arg(long, env = "SPATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Serve the data plane over HTTPS with this PEM certificate chain (leaf first; include the
    /// issuing CA so Spate's deliveries to its own addresses can verify it). Reloaded on change.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The data plane certificate's PEM private key.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve the admin API over HTTPS with this PEM certificate chain. Reloaded on change.
    #[arg(long, requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The admin API certificate's PEM private key.
    #[arg(long, requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
}
