//! `spate serve`: [`Server::build`] wires the log backend, eventing, serving,
//! sources, the control plane and the two HTTP routers (composed here, in one
//! place); [`Server::serve`] runs them until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use spate_core::delivery::BackoffPolicy;
use spate_delivery::Dispatcher;
use spate_eventing::{Eventing, EventingConfig};
use spate_log::{
    ConfigStore, FileBackend, FileLogConfig, FsyncPolicy, LogBackend, NatsBackend, NatsConfig, NatsConfigStore,
    Retention,
};
use spate_serving::{BacklogProbe, Serving, ServingConfig};
use spate_sources::{Sources, SourcesConfig};

use crate::config::ServeArgs;
use crate::control::ControlPlane;
use crate::error::ServeError;
use crate::tls::{Reloading, TlsFiles};

pub fn parse_fsync(s: &str) -> Result<FsyncPolicy, ServeError> {
    Ok(match s {
        "always" => FsyncPolicy::Always,
        "never" => FsyncPolicy::Never,
        other => match other.strip_prefix("interval:").and_then(|ms| ms.trim_end_matches("ms").parse::<u64>().ok()) {
            Some(ms) if ms > 0 => FsyncPolicy::Interval(Duration::from_millis(ms)),
            _ => {
                return Err(ServeError::Invalid(format!(
                    "--fsync: '{other}' is not one of always, never, interval:<milliseconds> (e.g. interval:10)"
                )));
            }
        },
    })
}

/// Holds an exclusive lock on the data directory for the life of the server.
struct DirLock(#[allow(dead_code)] std::fs::File);

fn lock_data_dir(dir: &Path) -> Result<DirLock, ServeError> {
    std::fs::create_dir_all(dir).map_err(ServeError::io(format!("creating data directory {}", dir.display())))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(ServeError::io(format!("opening {}/LOCK", dir.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(DirLock(f)),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(ServeError::Invalid(format!("data directory {} is in use by another spate process", dir.display())))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(ServeError::io(format!("locking {}/LOCK", dir.display()))(e)),
    }
}

/// A Service's backlog: what the eventing room has not yet delivered to it.
struct EventingBacklog(Arc<Eventing>);

impl BacklogProbe for EventingBacklog {
    fn backlog<'a>(&'a self, address: &'a str) -> std::pin::Pin<Box<dyn Future<Output = u64> + Send + 'a>> {
        Box::pin(self.0.backlog_for(address))
    }
}

/// A listener's certificate from its two flags (both or neither).
async fn tls_for(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    names: (&'static str, &'static str),
) -> Result<Option<Arc<Reloading>>, ServeError> {
    match TlsFiles::from_flags(cert, key, names)? {
        Some(files) => Ok(Some(Reloading::load(files).await?)),
        None => Ok(None),
    }
}

fn base_url(addr: SocketAddr, tls: bool) -> String {
    let ip = if addr.ip().is_unspecified() { "127.0.0.1".parse().expect("literal") } else { addr.ip() };
    format!("{}://{}", if tls { "https" } else { "http" }, SocketAddr::new(ip, addr.port()))
}

/// The two listeners' limits. Their connection caps together stay within the
/// open-file limit (raised to its maximum), with room left for logs and clients.
fn listener_limits(args: &ServeArgs) -> (crate::listener::Limits, crate::listener::Limits) {
    let fds = crate::listener::raise_fd_limit();
    let room = (fds.saturating_sub(512) as usize).max(64);
    let admin = args.admin_max_connections.clamp(1, room / 4);
    let data = args.max_connections.clamp(1, room - admin);
    if data < args.max_connections {
        tracing::warn!(
            requested = args.max_connections,
            allowed = data,
            open_file_limit = fds,
            "--max-connections lowered to fit the open-file limit"
        );
    }
    let limits = |max_connections, probe_slots| crate::listener::Limits {
        header_read_timeout: Duration::from_secs(args.header_read_timeout.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        max_connections,
        min_body_rate: args.min_body_rate,
        probe_slots,
    };
    (limits(data, 0), limits(admin, crate::listener::PROBE_SLOTS))
}

/// `--config-store`: `file` (resources.json in the data dir) or `nats` (a KV bucket shared by the cluster).
async fn config_store(args: &ServeArgs, nats: &NatsBackend) -> Result<Arc<dyn ConfigStore>, ServeError> {
    match args.config_store.as_str() {
        "file" => Ok(Arc::new(crate::file_store::FileConfigStore::open(&args.data_dir)?)),
        "nats" => {
            // NATS may still be starting: try for 30 s, then say what is wrong.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let attempt = async {
                    let n = nats.nats().await.map_err(|e| e.to_string())?;
                    NatsConfigStore::open(n, "resources").await.map_err(|e| e.to_string())
                };
                match attempt.await {
                    Ok(store) => {
                        let key = match &args.secret_key_file {
                            Some(p) => Some(crate::sealed::SecretKey::from_file(p)?),
                            None => None,
                        };
                        return Ok(Arc::new(crate::sealed::SealedSecrets::new(Arc::new(store), key)));
                    }
                    Err(e) if std::time::Instant::now() > deadline => {
                        return Err(ServeError::Invalid(format!(
                            "--config-store nats: cannot open the resources bucket at {}: {e}",
                            args.nats_url
                        )));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for NATS (--config-store nats)");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        other => Err(ServeError::Invalid(format!("--config-store: '{other}' is not one of file, nats"))),
    }
}

pub async fn run(args: ServeArgs) -> Result<std::process::ExitCode, ServeError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SPATE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| ServeError::Invalid(format!("installing the metrics recorder: {e}")))?;
    Server::build(args, metrics).await?.serve().await
}

/// Checks the flags that need no IO, and reads and admits the manifests given with `-f`.
fn check_args(args: &ServeArgs) -> Result<Option<String>, ServeError> {
    if args.max_event_size < 64 * 1024 {
        return Err(ServeError::Invalid(
            "--max-event-size must be at least 65536 bytes (CloudEvents requires receivers to accept 64 KiB events)"
                .into(),
        ));
    }
    if spate_api::BrokerClass::parse(&args.default_broker_class).is_none() {
        return Err(ServeError::Invalid(format!(
            "--default-broker-class: '{}' is not one of {}",
            args.default_broker_class,
            spate_api::BROKER_CLASSES.join(", ")
        )));
    }
    spate_log::nats::check_cluster_name(&args.cluster_name)
        .map_err(|e| ServeError::Invalid(format!("--cluster-name: {e}")))?;
    // Read and validate the manifests before touching anything.
    let manifests = if args.files.is_empty() { None } else { Some(spate_api::read_manifests(&args.files)?) };
    if let Some(text) = &manifests {
        spate_api::admit_text(text).map_err(|e| {
            let files = args.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            ServeError::Invalid(format!("{files}: {e}"))
        })?;
    }
    Ok(manifests)
}

/// The two bound listeners, their addresses and certificates.
struct Listeners {
    data: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    data_tls: Option<Arc<Reloading>>,
    admin_tls: Option<Arc<Reloading>>,
}

impl Listeners {
    async fn bind(args: &ServeArgs) -> Result<Listeners, ServeError> {
        let data = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(ServeError::io(format!("binding the data plane to {}", args.listen)))?;
        let admin = tokio::net::TcpListener::bind(&args.admin_listen)
            .await
            .map_err(ServeError::io(format!("binding the admin API to {}", args.admin_listen)))?;
        let addr = |l: &tokio::net::TcpListener| l.local_addr().map_err(ServeError::io("reading a bound address"));
        let (data_addr, admin_addr) = (addr(&data)?, addr(&admin)?);
        let data_tls = tls_for(args.tls_cert.as_ref(), args.tls_key.as_ref(), ("--tls-cert", "--tls-key")).await?;
        let admin_tls =
            tls_for(args.admin_tls_cert.as_ref(), args.admin_tls_key.as_ref(), ("--admin-tls-cert", "--admin-tls-key"))
                .await?;
        Ok(Listeners { data, admin, data_addr, admin_addr, data_tls, admin_tls })
    }

    /// The data plane's own base URL (what published addresses start with).
    fn base_url(&self) -> String {
        base_url(self.data_addr, self.data_tls.is_some())
    }
}

/// The eventing room over the embedded log, with the shared engines it may use.
fn build_eventing(
    args: &ServeArgs,
    base: &str,
    backend: &Arc<FileBackend>,
    nats: &Arc<NatsBackend>,
    dispatcher: &Dispatcher,
) -> Arc<Eventing> {
    let mut eventing_config = EventingConfig {
        base_url: base.to_string(),
        max_in_flight: args.max_in_flight.max(1),
        default_broker_class: spate_api::BrokerClass::parse(&args.default_broker_class)
            .unwrap_or(spate_api::BrokerClass::MtChannelBased),
        ack_wait: Duration::from_secs(args.ack_wait_seconds.max(1)),
        ..EventingConfig::default()
    };
    eventing_config.default_delivery.retry = Some(args.default_retry);
    eventing_config.default_delivery.backoff_policy = Some(BackoffPolicy::Exponential);
    eventing_config.default_delivery.backoff_delay = Some(Duration::from_millis(args.default_backoff_ms));
    Arc::new(
        Eventing::new(eventing_config, backend.clone() as Arc<dyn LogBackend>, dispatcher.clone())
            .with_streams(nats.clone())
            .with_rabbit(Arc::new(Arc::new(spate_log::RabbitBackend::new(spate_log::RabbitConfig {
                url: args.rabbitmq_url.clone(),
                cluster: args.cluster_name.clone(),
            }))))
            .with_kafka(Arc::new(Arc::new(spate_log::KafkaBackend::new(spate_log::KafkaConfig {
                bootstrap_servers: args.kafka_bootstrap_servers.clone(),
                // The default cluster keeps Knative's topic and group names unchanged.
                prefix: (args.cluster_name != "spate").then(|| args.cluster_name.clone()),
                instance: Some(instance_name(&args.data_dir)),
                // librdkafka's debug contexts, for diagnosing a consumer group (see the README).
                debug: std::env::var("SPATE_KAFKA_DEBUG").ok().filter(|d| !d.is_empty()),
            })))),
    )
}

/// Serving and sources; with a shared config store, the buckets for once-per-cluster work.
async fn build_serving_and_sources(
    args: &ServeArgs,
    base: &str,
    eventing: &Arc<Eventing>,
    nats: &Arc<NatsBackend>,
    dispatcher: &Dispatcher,
) -> Result<(Arc<Serving>, Arc<Sources>), ServeError> {
    let serving_config = ServingConfig {
        dir: args.data_dir.join("serving"),
        base_url: base.to_string(),
        domain: args.domain.clone().unwrap_or_else(|| "localhost".into()),
        host_urls: args.domain.is_some(),
        cap: args.max_instances.max(1),
        queue_limit: args.activator_queue.max(1),
        grace: Duration::from_secs(args.grace_seconds),
        ..ServingConfig::default()
    };
    let probe: Arc<dyn BacklogProbe> = Arc::new(EventingBacklog(eventing.clone()));
    let mut serving = Serving::new(serving_config, Some(probe))?;
    let sources_config = SourcesConfig {
        dir: args.data_dir.join("sources"),
        public_url: args.public_url.clone().unwrap_or_else(|| base.to_string()),
        grace: Duration::from_secs(args.grace_seconds),
        default_delivery: eventing.config().default_delivery.clone(),
        default_backoff: Duration::from_millis(args.default_backoff_ms),
        max_event_size: args.max_event_size,
    };
    let mut sources = Sources::new(sources_config, dispatcher.clone()).map_err(ServeError::io("starting sources"))?;
    if args.config_store == "nats" {
        let n = nats.nats().await.map_err(ServeError::storage(format!("connecting to NATS at {}", args.nats_url)))?;
        let claims = NatsConfigStore::open_with_ttl(n, "claims", Duration::from_secs(600))
            .await
            .map_err(ServeError::config("opening the claims bucket"))?;
        let leases = NatsConfigStore::open_with_ttl(n, "leases", crate::cluster::LEASE_TTL)
            .await
            .map_err(ServeError::config("opening the leases bucket"))?;
        let records =
            NatsConfigStore::open(n, "records").await.map_err(ServeError::config("opening the records bucket"))?;
        let records = Arc::new(records);
        serving = serving.with_shared_history(Arc::new(crate::cluster::NatsHistory(records.clone())));
        let holder = format!("{}-{base}", std::process::id());
        sources = sources.with_claims(Arc::new(crate::cluster::NatsClaims::new(claims, leases, records, holder)));
    }
    Ok((Arc::new(serving), Arc::new(sources)))
}

/// Sender identity and EventPolicies (`--oidc-issuer`), wired into the control plane's dispatcher.
async fn build_data_auth(
    args: &ServeArgs,
    base: &str,
    control: &mut ControlPlane,
) -> Result<Option<Arc<crate::data_auth::DataAuth>>, ServeError> {
    let oidc =
        crate::oidc::Oidc::from_flags(args.oidc_issuer.as_deref(), args.oidc_jwks.as_deref(), format!("spate:{base}"))
            .await?;
    let Some(oidc) = oidc else { return Ok(None) };
    let mode = crate::authz::Mode::parse(&args.authorization_mode).map_err(ServeError::Invalid)?;
    let auth = Arc::new(crate::data_auth::DataAuth::new(oidc, base.to_string(), crate::authz::AuthState::new(mode)));
    control.dispatcher().set_token_source(auth.clone());
    Ok(Some(auth))
}

/// A server, built and ready to serve: the control plane has loaded the store,
/// applied `-f` manifests and reconciled once; the routers are composed.
pub struct Server {
    pub control: Arc<ControlPlane>,
    /// The data plane: ingress, Services, webhooks (no guard: the data plane authenticates senders itself).
    pub data: axum::Router,
    /// The admin API behind its guard.
    pub admin: axum::Router,
    listeners: Listeners,
    limits: (crate::listener::Limits, crate::listener::Limits),
    backend: Arc<FileBackend>,
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    data_dir: PathBuf,
    fsync: String,
    _lock: DirLock,
}

impl Server {
    /// Builds everything `spate serve` runs, without serving yet (tests call the routers directly).
    pub async fn build(args: ServeArgs, metrics: PrometheusHandle) -> Result<Server, ServeError> {
        let manifests = check_args(&args)?;
        let fsync = parse_fsync(&args.fsync)?;
        let traces = args.otlp_endpoint.as_deref().map(crate::otel::install).transpose()?;
        let lock = lock_data_dir(&args.data_dir)?;
        let listeners = Listeners::bind(&args).await?;
        let admin_tokens = match &args.admin_token_file {
            Some(path) => crate::admin_auth::read_tokens(path)?,
            None => vec![],
        };
        crate::admin_auth::check_binding(listeners.admin_addr, !admin_tokens.is_empty())?;
        let admin_guard = crate::admin_auth::AdminGuard::new(listeners.admin_addr, &args.admin_host, admin_tokens);
        let log_config = FileLogConfig {
            fsync,
            retention: Retention {
                max_age: (args.retention_seconds > 0).then(|| Duration::from_secs(args.retention_seconds)),
                max_bytes: (args.retention_bytes > 0).then_some(args.retention_bytes),
            },
            ..FileLogConfig::default()
        };
        let backend = Arc::new(FileBackend::new(args.data_dir.join("logs"), log_config));
        let base = listeners.base_url();
        // One dispatcher (one connection pool, one set of trusted CAs) for every delivery.
        let dispatcher = Dispatcher::default();
        let nats = Arc::new(NatsBackend::new(NatsConfig {
            url: args.nats_url.clone(),
            ca_file: args.nats_ca_file.clone(),
            cluster: args.cluster_name.clone(),
            ..NatsConfig::default()
        }));
        let eventing = build_eventing(&args, &base, &backend, &nats, &dispatcher);
        // The config store first: with NATS it waits (30 s at most) for NATS to answer.
        let shared = config_store(&args, &nats).await?;
        let (serving, sources) = build_serving_and_sources(&args, &base, &eventing, &nats, &dispatcher).await?;
        let mut control = ControlPlane::new(shared, eventing.clone(), serving.clone(), sources.clone(), dispatcher);
        if let Some(t) = &listeners.data_tls
            && let Some(authority) = spate_core::destination::https_authority(&base)
        {
            let tls = t.clone();
            control = control.with_own_tls(authority, Arc::new(move || tls.chain_pem()));
        }
        let data_auth = build_data_auth(&args, &base, &mut control).await?;
        if let Some(auth) = &data_auth {
            control = control.with_data_auth(auth.clone());
        }
        let control = Arc::new(control);
        // The config store's current state first, then our manifests, then every later change.
        control.start().await.map_err(|e| ServeError::Invalid(format!("reading the stored resources: {e}")))?;
        if let Some(text) = &manifests {
            let applied = control.apply(text, false).await.map_err(|e| ServeError::Invalid(e.to_string()))?;
            for a in applied {
                tracing::info!(kind = a.kind, namespace = %a.namespace, name = %a.name, action = a.action, "applied");
            }
        }
        control.reconcile().await;
        let upkeep = metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        let proxy = crate::proxy::Proxy { serving: serving.clone(), max_body: args.max_event_size };
        let data = crate::ingress::router(crate::ingress::Ingress {
            kafka_sinks: control.kafka_sinks(),
            auth: data_auth,
            eventing: eventing.clone(),
            max_event_size: args.max_event_size,
        })
        .merge(crate::proxy::router(proxy.clone()))
        .merge(crate::webhooks::router(sources.clone(), args.max_event_size))
        .fallback(crate::ingress::no_route)
        .layer(axum::middleware::from_fn_with_state(proxy, crate::proxy::by_host));
        let admin = crate::admin::router(crate::admin::Admin { control: control.clone(), metrics })
            .fallback(crate::ingress::no_route)
            .layer(axum::middleware::from_fn_with_state(admin_guard, crate::admin_auth::guard));
        let limits = listener_limits(&args);
        Ok(Server {
            control,
            data,
            admin,
            listeners,
            limits,
            backend,
            traces,
            data_dir: args.data_dir.clone(),
            fsync: args.fsync.clone(),
            _lock: lock,
        })
    }

    /// Where the admin API listens (its guard checks `Host` against it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn admin_addr(&self) -> SocketAddr {
        self.listeners.admin_addr
    }

    /// Serves both listeners until SIGINT or SIGTERM, then stops in order: requests, workers, logs.
    pub async fn serve(self) -> Result<std::process::ExitCode, ServeError> {
        let Server { control, data, admin, listeners: l, limits, backend, traces, data_dir, fsync, _lock } = self;
        // Tests and scripts read these two lines to find the servers.
        println!("spate: data plane listening on {}", base_url(l.data_addr, l.data_tls.is_some()));
        println!("spate: admin API listening on {}", base_url(l.admin_addr, l.admin_tls.is_some()));
        tracing::info!(data_dir = %data_dir.display(), fsync = %fsync, "spate is ready");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let acceptor = |t: &Option<Arc<Reloading>>| t.as_ref().map(|t| t.acceptor()).transpose();
        let (data_acceptor, admin_acceptor) = (acceptor(&l.data_tls)?, acceptor(&l.admin_tls)?);
        for t in l.data_tls.iter().chain(l.admin_tls.iter()) {
            t.clone().watch();
        }
        let serve_data = crate::listener::serve(l.data, data, limits.0, stop_rx.clone(), data_acceptor);
        let serve_admin = crate::listener::serve(l.admin, admin, limits.1, stop_rx, admin_acceptor);
        let (data_task, admin_task) = (tokio::spawn(serve_data), tokio::spawn(serve_admin));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(ServeError::io("installing the SIGTERM handler"))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("stopping: finishing requests, stopping workers, closing logs");
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            let _ = data_task.await;
            let _ = admin_task.await;
        })
        .await;
        control.shutdown().await;
        if let Some(p) = traces {
            crate::otel::shutdown(p).await;
        }
        // Closing writes what each log has queued and every consumer position: off the runtime.
        let _ = tokio::task::spawn_blocking(move || backend.close_all()).await;
        Ok(std::process::ExitCode::SUCCESS)
    }
}

/// A stable name for this instance: its host and data directory (the same after a restart).
fn instance_name(data_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let mut h = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut h, dir.to_string_lossy().as_bytes());
    let hash = std::hash::Hasher::finish(&h);
    format!("{}-{hash:012x}", host.trim())
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
