//! Test harness: a real `spate serve` process and real HTTP sinks.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use spate_core::CloudEvent;
use tokio::sync::Notify;

pub const BIN: &str = env!("CARGO_BIN_EXE_spate");

pub struct Server {
    child: Child,
    pub data: String,
    pub admin: String,
    pub dir: PathBuf,
    /// What the server printed on stderr so far (also echoed to the test's stderr).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `spate serve` on ephemeral ports with `dir` as data directory.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Self::start_on(dir, "127.0.0.1:0", "127.0.0.1:0", extra)
    }

    pub fn start_on(dir: &Path, listen: &str, admin: &str, extra: &[&str]) -> Server {
        Self::start_with_env(dir, listen, admin, extra, &[])
    }

    /// [`Server::start_on`] with extra environment variables (they override `SPATE_LOG`).
    pub fn start_with_env(dir: &Path, listen: &str, admin: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--listen", listen, "--admin-listen", admin])
            .args(extra)
            .env("SPATE_LOG", std::env::var("SPATE_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn spate serve");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (stderr, lines) = (child.stderr.take().expect("stderr"), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                lines.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(u) = line.strip_prefix("spate: data plane listening on ") {
                    let _ = tx.send(("data", u.to_string()));
                } else if let Some(u) = line.strip_prefix("spate: admin API listening on ") {
                    let _ = tx.send(("admin", u.to_string()));
                }
            }
        });
        let (mut data, mut admin) = (None, None);
        while data.is_none() || admin.is_none() {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(("data", u)) => data = Some(u),
                Ok((_, u)) => admin = Some(u),
                Err(_) => {
                    let _ = child.kill();
                    panic!("spate serve did not report its addresses (exit: {:?})", child.try_wait());
                }
            }
        }
        Server { child, data: data.unwrap(), admin: admin.unwrap(), dir: dir.to_path_buf(), log }
    }

    pub fn broker_url(&self, ns: &str, name: &str) -> String {
        format!("{}/{ns}/{name}", self.data)
    }

    pub async fn apply(&self, yaml: &str) -> (u16, serde_json::Value) {
        let r = client()
            .post(format!("{}/apply", self.admin))
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .expect("admin reachable");
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.text().await.unwrap()).unwrap_or(serde_json::Value::Null))
    }

    pub async fn apply_ok(&self, yaml: &str) {
        let (s, v) = self.apply(yaml).await;
        assert_eq!(s, 200, "apply failed: {v}");
    }

    /// GET an admin API path (e.g. `/apis/eventing.knative.dev/v1/brokers`) as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        client().get(format!("{}{path}", self.admin)).send().await.unwrap().text().await.unwrap().parse().unwrap()
    }

    pub async fn get(&self, plural: &str, ns: &str, name: &str) -> serde_json::Value {
        self.admin_json(&format!("/apis/eventing.knative.dev/v1/namespaces/{ns}/{plural}/{name}")).await
    }

    /// Polls an admin API path until `pred` holds (a deadline guards against hangs).
    pub async fn wait_json(
        &self,
        path: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.admin_json(path).await;
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        client().get(format!("{}/metrics", self.admin)).send().await.unwrap().text().await.unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub event: CloudEvent,
    pub at: Instant,
}

type Behaviour = Arc<dyn Fn(&Received, usize) -> Response + Send + Sync>;

/// An HTTP subscriber that records what it receives and answers as told.
#[derive(Clone)]
pub struct Sink {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    notify: Arc<Notify>,
    pub in_progress: Arc<std::sync::atomic::AtomicUsize>,
}

pub fn accept_all() -> Behaviour {
    Arc::new(|_, _| StatusCode::ACCEPTED.into_response())
}

impl Sink {
    pub async fn start() -> Sink {
        Self::with(accept_all(), Duration::ZERO).await
    }

    /// `delay` is applied before answering (a slow subscriber).
    pub async fn with(behaviour: Behaviour, delay: Duration) -> Sink {
        Self::start_inner(behaviour, delay, None).await
    }

    /// Records every event and accepts it, except `stuck_id`: that one is
    /// recorded and never answered (a subscriber stuck on one event).
    pub async fn stuck_on(stuck_id: &str) -> Sink {
        Self::start_inner(accept_all(), Duration::ZERO, Some(stuck_id.to_string())).await
    }

    /// An HTTPS subscriber serving `cert` (a PEM chain) with `key`; accepts every event.
    pub async fn start_tls(cert: &Path, key: &Path) -> Sink {
        Self::serve(accept_all(), Duration::ZERO, None, Some(tls_acceptor(cert, key))).await
    }

    async fn start_inner(behaviour: Behaviour, delay: Duration, stuck: Option<String>) -> Sink {
        Self::serve(behaviour, delay, stuck, None).await
    }

    async fn serve(
        behaviour: Behaviour,
        delay: Duration,
        stuck: Option<String>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Sink {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let notify = Arc::new(Notify::new());
        let in_progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (g, n, ip) = (got.clone(), notify.clone(), in_progress.clone());
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (g, n, ip, behaviour) = (g.clone(), n.clone(), ip.clone(), behaviour.clone());
            let stuck = stuck.clone();
            async move {
                let event = match spate_core::http_codec::decode(&headers, body) {
                    Ok(mut d) => d.events.remove(0),
                    Err(e) => {
                        eprintln!("test sink: rejecting an undecodable request: {e}");
                        return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
                    }
                };
                let r = Received { headers, event, at: Instant::now() };
                ip.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let count = {
                    let mut g = g.lock().unwrap();
                    g.push(r.clone());
                    g.len()
                };
                n.notify_waiters();
                if stuck.as_deref() == Some(r.event.id.as_str()) {
                    std::future::pending::<()>().await;
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let resp = behaviour(&r, count);
                ip.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                resp
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/", listener.local_addr().unwrap());
        match tls {
            None => {
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else { continue };
                        let (acceptor, app) = (acceptor.clone(), app.clone());
                        tokio::spawn(async move {
                            // A client that does not trust this certificate ends here.
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            let service = hyper_util::service::TowerToHyperService::new(app);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                .await;
                        });
                    }
                });
            }
        }
        Sink { url, got, notify, in_progress }
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub fn events(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `pred` holds over the received events. The deadline is a
    /// safety net against hangs, not the synchronisation.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let notified = self.notify.notified();
            {
                let g = self.got.lock().unwrap();
                if pred(&g) {
                    return g.clone();
                }
            }
            if Instant::now() > deadline {
                let ids: Vec<String> = self.events().iter().map(|r| r.event.id.clone()).collect();
                let shown = &ids[..ids.len().min(20)];
                panic!("timed out waiting for {what}; got {} event(s), the first: {shown:?}", ids.len());
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        }
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.wait_until(&format!("{n} event(s) at {}", self.url), |g| g.len() >= n).await
    }

    pub async fn wait_for_id(&self, id: &str) -> Vec<Received> {
        self.wait_until(&format!("event {id} at {}", self.url), |g| g.iter().any(|r| r.event.id == id)).await
    }
}

pub fn broker(name: &str, extra_spec: &str) -> String {
    format!("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\nspec:\n{extra_spec}\n")
}

pub fn trigger(name: &str, broker: &str, filter: &str, subscriber: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  broker: {broker}\n{filter}  subscriber:\n    uri: {subscriber}\n{extra_spec}\n"
    )
}

pub fn type_filter(ty: &str) -> String {
    format!("  filter:\n    attributes:\n      type: {ty}\n")
}

/// Sends a binary-mode JSON event and returns the status.
pub async fn send(url: &str, id: &str, ty: &str, data: &str) -> u16 {
    send_as(url, id, ty, "application/json", data).await
}

/// Sends a binary-mode event with the given content type and returns the status.
pub async fn send_as(url: &str, id: &str, ty: &str, content_type: &str, data: &str) -> u16 {
    client()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/test")
        .header("ce-type", ty)
        .header("content-type", content_type)
        .body(data.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Posts `data` with exactly these headers (a binary-mode event written by hand); returns the status.
pub async fn post_with(url: &str, headers: &[(&str, &str)], data: &str) -> u16 {
    let mut req = client().post(url).body(data.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The broker classes the contract tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `MTChannelBasedBroker`: the embedded log.
    Embedded,
    /// `NatsJetStreamBroker`: NATS JetStream on 127.0.0.1:4222 (or `SPATE_NATS_URL`).
    Nats,
    /// `RabbitMQBroker`: RabbitMQ on 127.0.0.1:5672 (guest/guest).
    Rabbit,
    /// `Kafka`: a Kafka-protocol broker (tansu) on 127.0.0.1:19092 (or `SPATE_KAFKA`).
    Kafka,
}

/// The Kafka-protocol broker's address if one answers; otherwise says why and
/// (outside CI) the caller skips.
pub fn kafka_addr() -> Option<String> {
    let addr = std::env::var("SPATE_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
    match std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)) {
        Ok(_) => Some(addr),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but no Kafka-protocol broker answers at {addr}: {e} (.ci/run starts tansu)"
            );
            eprintln!("skipping: no Kafka-protocol broker at {addr} ({e}); start tansu as .ci/run does");
            None
        }
    }
}

/// True if RabbitMQ answers on 127.0.0.1:5672; otherwise says why and (outside CI) the caller skips.
pub fn rabbit_available() -> bool {
    if std::net::TcpStream::connect_timeout(&"127.0.0.1:5672".parse().unwrap(), Duration::from_secs(1)).is_ok() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "RabbitMQ is not answering at 127.0.0.1:5672 (CI needs it)");
    eprintln!("skipping: RabbitMQ is not answering at 127.0.0.1:5672");
    false
}

pub fn nats_url() -> String {
    std::env::var("SPATE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// True if NATS answers; otherwise says why and (outside CI) the caller skips.
pub fn nats_available() -> bool {
    let addr = nats_url().trim_start_matches("nats://").to_string();
    if std::net::TcpStream::connect_timeout(&addr.parse().expect("NATS address"), Duration::from_secs(1)).is_ok() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "NATS is not answering at {addr} (CI needs it)");
    eprintln!("skipping: NATS is not answering at {addr}");
    false
}

static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A unique `--cluster-name` for one test; its streams, consumers and KV
/// buckets are deleted from NATS when this is dropped.
pub struct NatsCluster {
    pub name: String,
}

impl NatsCluster {
    pub fn new(test: &str) -> NatsCluster {
        let n = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let short: String = test.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
        NatsCluster { name: format!("t{}-{short}-{n}", std::process::id()) }
    }

    /// `--default-broker-class NatsJetStreamBroker --cluster-name <name>`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--default-broker-class".into(),
            "NatsJetStreamBroker".into(),
            "--cluster-name".into(),
            self.name.clone(),
            "--nats-url".into(),
            nats_url(),
        ]
    }
}

impl NatsCluster {
    /// The names of this cluster's JetStream streams.
    pub async fn streams(&self) -> Vec<String> {
        use futures_util::StreamExt;
        let client = async_nats::connect(nats_url()).await.expect("NATS");
        let js = async_nats::jetstream::new(client);
        let prefix = format!("{}_", self.name);
        let mut names = js.stream_names();
        let mut out = vec![];
        while let Some(n) = names.next().await {
            let n = n.expect("listing streams");
            if n.starts_with(&prefix) {
                out.push(n);
            }
        }
        out
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        let prefix = format!("{}_", self.name);
        let kv_prefix = format!("KV_{}", self.name);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                use futures_util::StreamExt;
                let Ok(client) = async_nats::connect(nats_url()).await else { return };
                let js = async_nats::jetstream::new(client);
                let mut names = js.stream_names();
                let mut doomed = vec![];
                while let Some(Ok(n)) = names.next().await {
                    if n.starts_with(&prefix) || n.starts_with(&kv_prefix) {
                        doomed.push(n);
                    }
                }
                for n in doomed {
                    let _ = js.delete_stream(&n).await;
                }
            });
        })
        .join();
    }
}

/// Server arguments for a contract test on `class`, and the NATS cluster to
/// clean up (None for the embedded log). `None` overall: skip (no NATS, not CI).
pub fn class_args(class: Class, test: &str) -> Option<(Vec<String>, Option<NatsCluster>)> {
    match class {
        Class::Embedded => Some((vec![], None)),
        Class::Nats => {
            if !nats_available() {
                return None;
            }
            let c = NatsCluster::new(test);
            Some((c.args(), Some(c)))
        }
        Class::Rabbit => {
            if !rabbit_available() {
                return None;
            }
            // Exchanges and queues are prefixed by the cluster name, unique per test.
            let name = NatsCluster::new(test).name.clone();
            Some((vec!["--default-broker-class".into(), "RabbitMQBroker".into(), "--cluster-name".into(), name], None))
        }
        Class::Kafka => {
            let addr = kafka_addr()?;
            // Topics and consumer groups are prefixed by the cluster name, unique per test.
            let name = NatsCluster::new(test).name.clone();
            let args = ["--default-broker-class", "Kafka", "--kafka-bootstrap-servers", &addr, "--cluster-name", &name];
            Some((args.iter().map(|a| a.to_string()).collect(), None))
        }
    }
}

/// The topics of the Kafka-protocol broker (empty if none answers).
pub fn kafka_topics() -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Some(addr) = std::env::var("SPATE_KAFKA").ok().or_else(|| Some("127.0.0.1:19092".into())) else {
        return vec![];
    };
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", &addr).create().expect("client");
    match c.fetch_metadata(None, Duration::from_secs(10)) {
        Ok(md) => md.topics().iter().map(|t| t.name().to_string()).collect(),
        Err(_) => vec![],
    }
}

/// A TLS acceptor for a test server from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A throwaway certificate authority made with the `openssl` command.
pub struct TestCa {
    pub dir: PathBuf,
    /// The CA certificate (PEM file).
    pub cert: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name} test CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        TestCa { cert: dir.join("ca.pem"), dir }
    }

    pub fn pem(&self) -> String {
        std::fs::read_to_string(&self.cert).unwrap()
    }

    /// A server certificate for 127.0.0.1 and localhost: (chain file = leaf + CA, key file).
    pub fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = &self.dir;
        std::fs::write(d.join(format!("{name}.ext")), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n").unwrap();
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.leaf.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
        let chain = std::fs::read_to_string(d.join(format!("{name}.leaf.pem"))).unwrap() + &self.pem();
        std::fs::write(d.join(format!("{name}.pem")), chain).unwrap();
        (d.join(format!("{name}.pem")), d.join(format!("{name}.key")))
    }
}
