use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
pub use spate_server::ServeArgs;

#[derive(Parser)]
#[command(
    name = "spate",
    version,
    about = "Knative Eventing in one binary: brokers, triggers and delivery on an embedded durable log"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Bearer token for the admin API (one of the server's --admin-token-file lines).
    #[arg(long, env = "SPATE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Admin API of the server to talk to (default http://127.0.0.1:8081; for `bench`, use
    /// this running server instead of starting one in-process).
    #[arg(long, env = "SPATE_SERVER", global = true)]
    pub server: Option<String>,
    /// Namespace (default `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Output format of `get`: table, json or yaml.
    #[arg(short = 'o', long, value_enum, global = true)]
    pub output: Option<OutputFormat>,
}

impl Cli {
    /// Hands the global options (accepted by every subcommand) to the subcommand.
    pub fn resolve(mut self) -> Command {
        let server = ServerArg { server: self.server.clone().unwrap_or_else(|| DEFAULT_SERVER.to_string()) };
        let ns = self.namespace.clone().unwrap_or_else(|| "default".to_string());
        match &mut self.command {
            Command::Apply(a) => a.server = server,
            Command::Delete(a) => (a.server, a.namespace) = (server, ns),
            Command::Get(a) => {
                (a.server, a.namespace) = (server, ns);
                a.output = self.output.unwrap_or(OutputFormat::Table);
            }
            Command::Send(a) => (a.server, a.namespace) = (server, ns),
            Command::Logs(a) => (a.server, a.namespace) = (server, ns),
            Command::Describe(a) => (a.server, a.namespace) = (server, ns),
            Command::Replay(a) => (a.server, a.namespace) = (server, ns),
            Command::Tail(a) => {
                (a.server, a.namespace) = (server, ns);
                a.output = self.output.unwrap_or(OutputFormat::Table);
            }
            Command::Bench(a) => a.server = self.server.clone(),
            Command::Kubeconfig(a) => (a.server, a.token, a.namespace) = (server, self.token.clone(), ns),
            Command::Serve(_) | Command::Validate(_) | Command::BenchPart(_) => {}
        }
        self.command
    }
}

/// Where the CLI finds the admin API without `--server` or `SPATE_SERVER`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8081";

#[derive(Subcommand)]
pub enum Command {
    /// Run the data plane, the admin API and every applied resource.
    Serve(Box<ServeArgs>),
    /// Apply Knative manifests (all or nothing) to a running server.
    Apply(ApplyArgs),
    /// Delete a resource, or every resource in a manifest file.
    Delete(DeleteArgs),
    /// List or show resources.
    Get(GetArgs),
    /// Send CloudEvents (like `kn event send`).
    Send(SendArgs),
    /// Show what a Service's instances printed (`spate logs service/NAME`).
    Logs(LogsArgs),
    /// One resource in detail: conditions with reasons, addresses, delivery, owner, status.
    Describe(DescribeArgs),
    /// Stream events as brokers and channels store them (`broker/NAME`, `channel/NAME`, or all).
    Tail(TailArgs),
    /// Redeliver the events a broker's log retains, from an offset or a time, to one trigger only.
    Replay(ReplayArgs),
    /// Validate manifests offline; prints every problem with its field path.
    Validate(ValidateArgs),
    /// Measure broker throughput and latency against an embedded sink.
    Bench(BenchArgs),
    /// Print a kubeconfig for kubectl and client libraries: this server (`--server`), the
    /// token (`--token`), and the CA that signed the admin certificate (`--ca-file`).
    Kubeconfig(KubeconfigArgs),
    /// A part of `spate bench --separate-processes` (its sink or its load generator).
    #[command(hide = true)]
    BenchPart(BenchPartArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchRole {
    /// Receive events, driven by JSON lines on stdin.
    Sink,
    /// Send the load to `--url` and print the result as JSON.
    Load,
}

#[derive(Args, Clone)]
pub struct BenchPartArgs {
    #[arg(value_enum)]
    pub role: BenchRole,
    /// With `load`: where the events go.
    #[arg(long, default_value = "")]
    pub url: String,
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// The admin API a client command talks to (the global `--server`).
#[derive(Clone, Debug, Default)]
pub struct ServerArg {
    pub server: String,
}

#[derive(Args)]
pub struct KubeconfigArgs {
    /// PEM file of the CA (or self-signed certificate) that signed the admin API's
    /// certificate; without it, clients trust the system's roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    #[arg(skip)]
    pub server: ServerArg,
    #[arg(skip)]
    pub token: Option<String>,
    #[arg(skip)]
    pub namespace: String,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// Manifest files or directories; `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Kind (broker, trigger) when deleting by name.
    pub kind: Option<String>,
    pub name: Option<String>,
    #[arg(skip)]
    pub namespace: String,
    /// Delete every resource named in these manifests.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Args)]
pub struct TailArgs {
    /// `broker/NAME` or `channel/NAME` (events as stored), `trigger/NAME` (each event the
    /// trigger took and what became of it), in `-n`'s namespace; nothing: every broker and channel.
    pub target: Option<String>,
    /// Only events this CESQL expression matches (evaluated by the server).
    #[arg(long)]
    pub filter: Option<String>,
    #[arg(skip)]
    pub namespace: String,
    #[arg(skip = OutputFormat::Table)]
    pub output: OutputFormat,
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["from_time", "from_offset"])))]
pub struct ReplayArgs {
    /// `trigger/NAME` (in `-n`'s namespace).
    pub target: String,
    /// Replay the events stored at or after this time (RFC 3339, e.g. 2026-12-01T10:00:00Z).
    #[arg(long)]
    pub from_time: Option<String>,
    /// Replay from this offset of the broker's log.
    #[arg(long)]
    pub from_offset: Option<u64>,
    #[arg(skip)]
    pub namespace: String,
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(Args)]
pub struct DescribeArgs {
    /// Kind (broker, trigger, ksvc, imc, …), or `KIND/NAME`.
    pub kind: String,
    pub name: Option<String>,
    #[arg(skip)]
    pub namespace: String,
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(Args)]
pub struct LogsArgs {
    /// `service/NAME` (or `ksvc/NAME`).
    pub target: String,
    #[arg(skip)]
    pub namespace: String,
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(Args)]
pub struct GetArgs {
    /// Kind: brokers, triggers, channels, subscriptions, sequences, parallels, services,
    /// and (read-only) revisions, configurations, routes.
    pub kind: String,
    pub name: Option<String>,
    #[arg(skip)]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(skip = OutputFormat::Table)]
    pub output: OutputFormat,
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SendMode {
    Binary,
    Structured,
}

#[derive(Args)]
pub struct SendArgs {
    /// Target URL (any CloudEvents receiver).
    #[arg(long, conflicts_with = "broker")]
    pub to: Option<String>,
    /// Broker name; its address is looked up through the admin API.
    #[arg(long)]
    pub broker: Option<String>,
    #[arg(skip)]
    pub namespace: String,
    #[arg(long = "type", default_value = "dev.spate.example")]
    pub ty: String,
    #[arg(long, default_value = "/spate/cli")]
    pub source: String,
    /// Event id (default: generated; with --count, suffixed by the sequence number).
    #[arg(long)]
    pub id: Option<String>,
    /// Payload.
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// Extension attribute `name=value`; repeatable.
    #[arg(short = 'e', long = "extension")]
    pub extensions: Vec<String>,
    #[arg(long, value_enum, default_value_t = SendMode::Binary)]
    pub mode: SendMode,
    /// Number of events to send.
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Events per second (0: as fast as the concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(Args)]
pub struct ValidateArgs {
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Total events per phase.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// The bench broker's class; with NatsJetStreamBroker, Kafka or RabbitMQBroker the run also
    /// measures the raw engine (a plain client producing with acks and consuming the same
    /// payloads) as the baseline.
    #[arg(long, default_value = "MTChannelBasedBroker")]
    pub broker_class: String,
    /// NATS for `--broker-class NatsJetStreamBroker`.
    #[arg(long, default_value = "nats://127.0.0.1:4222", env = "SPATE_NATS_URL")]
    pub nats_url: String,
    /// Kafka for `--broker-class Kafka`.
    #[arg(long, default_value = "127.0.0.1:19092", env = "SPATE_KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: String,
    /// RabbitMQ for `--broker-class RabbitMQBroker`.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f", env = "SPATE_RABBITMQ_URL")]
    pub rabbitmq_url: String,
    /// Concurrent senders.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Target rate in events/s (0: closed loop at the given concurrency).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// The global `--server`: use that running server instead of starting one in-process.
    #[arg(skip)]
    pub server: Option<String>,
    /// Data directory for the in-process server (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// fsync policy of the in-process server.
    #[arg(long, default_value = "always")]
    pub fsync: String,
    /// Events sent as a batch per request (1 = one event per request, binary mode).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Skip the direct-to-sink baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Measure the baselines and the end-to-end path this many times, alternately
    /// (each round prints its figures), then print each ratio's median: on a
    /// machine whose speed drifts, both sides of every ratio then move together.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Run the load generator and the sink as processes of their own, so that
    /// neither's cost is counted in the other's process.
    #[arg(long)]
    pub separate_processes: bool,
    /// The sink refuses everything (503): events pile up in the log behind the
    /// trigger while server RSS is sampled. Measures memory under backlog.
    #[arg(long)]
    pub stopped_subscriber: bool,
    /// Triggers on the broker: one matches the bench events, the others filter
    /// on other exact types (measures matching cost as triggers grow). With more
    /// than one, each round also drives the same load through a broker where the
    /// matching trigger is alone and prints the ratio of the two rates.
    #[arg(long, default_value_t = 1)]
    pub triggers: usize,
    /// What the load goes through: a Broker with Triggers, or a Channel with Subscriptions.
    #[arg(long, value_enum, default_value_t = BenchTarget::Broker)]
    pub target: BenchTarget,
    /// With `--target channel`: subscriptions on the channel, each delivering every event to the sink.
    /// With more than one, the run also measures a channel with one subscription and prints the
    /// N subscriptions' delivery rate over min(N × that rate, the forwarding proxy's).
    #[arg(long, default_value_t = 1)]
    pub subscriptions: usize,
    /// The bench trigger's `spate.dev/max-in-flight` (deliveries outstanding at once).
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// With `--target service`: where `hello.py` is (the compiled `hello-fn` sits next to `spate`).
    #[arg(long, default_value = "examples/functions")]
    pub function_dir: PathBuf,
    /// With `--target service`: length of the burst from zero, in seconds.
    #[arg(long, default_value_t = 10)]
    pub burst_seconds: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    Broker,
    Channel,
    /// Knative Services: cold starts, the activator's warm cost, a burst from zero.
    Service,
}
