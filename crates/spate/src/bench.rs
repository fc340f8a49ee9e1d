//! `spate bench`: a load generator with an embedded sink.
//!
//! It starts `spate serve` as a child process (or targets `--server`), applies
//! a Broker and one Trigger whose subscriber is the sink in this process, and
//! drives 1 KiB CloudEvents at a concurrency or a rate. It reports ingress and
//! end-to-end throughput and latency percentiles, and runs the same load
//! straight to the sink as a baseline. End-to-end latency is the time from
//! just before a request is sent to its arrival at the sink, carried in the
//! `benchsent` extension (same machine, same clock).

pub mod nats;
mod proxy;
mod raw;
mod serving;
pub mod sink;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use spate_core::{CloudEvent, ExtValue};

use spate_api::Kind;

use crate::cli::{BenchArgs, BenchTarget};
use sink::Sink;

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

struct Child_ {
    child: Child,
    admin: String,
    data: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The NATS cluster name of this bench run (its streams are its own).
fn bench_cluster() -> String {
    format!("bench-{}", std::process::id())
}

fn start_server(a: &BenchArgs) -> anyhow::Result<Child_> {
    let (dir, tmp) = match &a.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::tempdir().context("creating a temporary data directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let exe = std::env::current_exe().context("locating the spate binary")?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--fsync", &a.fsync, "--data-dir"])
        .arg(&dir)
        .args([
            "--default-broker-class",
            &a.broker_class,
            "--nats-url",
            &a.nats_url,
            "--kafka-bootstrap-servers",
            &a.kafka_bootstrap_servers,
            "--rabbitmq-url",
            &a.rabbitmq_url,
            "--cluster-name",
            &bench_cluster(),
        ])
        .env("SPATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting spate serve")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let (mut data, mut admin) = (None, None);
    while data.is_none() || admin.is_none() {
        let line = lines.next().ok_or_else(|| anyhow!("spate serve exited before reporting its addresses"))??;
        if let Some(u) = line.strip_prefix("spate: data plane listening on ") {
            data = Some(u.to_string());
        } else if let Some(u) = line.strip_prefix("spate: admin API listening on ") {
            admin = Some(u.to_string());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Child_ { child, admin: admin.expect("set"), data: data.expect("set"), _dir: tmp })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quantiles {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Quantiles {
    /// Of `v` (nanoseconds), through an HDR histogram (3 significant digits); `None` when empty.
    fn of(v: Vec<u64>) -> Option<Quantiles> {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).ok()?;
        for x in v {
            // Auto-resizing: a value is refused only if it cannot be represented at all.
            let _ = h.record(x.max(1));
        }
        if h.is_empty() {
            return None;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Some(Quantiles {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }
}

impl std::fmt::Display for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms", self.p50, self.p99, self.p999, self.max)
    }
}

/// Latency percentiles of `v` (nanoseconds), as text ("n/a" when empty).
pub(crate) fn percentiles(v: Vec<u64>) -> String {
    text(Quantiles::of(v))
}

/// Quantiles as text, "n/a" for none.
fn text(q: Option<Quantiles>) -> String {
    q.map_or_else(|| "n/a".into(), |q| q.to_string())
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct LoadResult {
    acked: u64,
    failed: u64,
    elapsed_ns: u64,
    ack_latencies: Vec<u64>,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.acked as f64 / (self.elapsed_ns.max(1) as f64 / 1e9)
    }
}

/// Sends the load: from this process, or (`--separate-processes`) from a
/// child process of its own (`spate bench-part load`), so that the load
/// generator's cost is not the sink's.
async fn load(a: &BenchArgs, url: &str) -> anyhow::Result<LoadResult> {
    if !a.separate_processes {
        return Ok(drive(a, url).await);
    }
    let exe = std::env::current_exe().context("locating the spate binary")?;
    let out = tokio::process::Command::new(exe)
        .args(["bench-part", "load", "--url", url])
        .args(["--events", &a.events.to_string(), "--concurrency", &a.concurrency.to_string()])
        .args(["--batch", &a.batch.to_string(), "--size", &a.size.to_string(), "--rate", &a.rate.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running the load process")?;
    if !out.status.success() {
        bail!("the load process failed: {}", out.status);
    }
    serde_json::from_slice(&out.stdout).context("reading the load process's result")
}

/// `spate bench-part load --url URL`: sends the load and prints its result as JSON.
pub async fn load_child(a: &BenchArgs, url: &str) -> anyhow::Result<()> {
    let r = drive(a, url).await;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// Sends `a.events` events to `url` and waits for the acknowledgements.
async fn drive(a: &BenchArgs, url: &str) -> LoadResult {
    let client = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(a.concurrency * 2)
        .build()
        .expect("client builds");
    let payload = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(a.size.saturating_sub(10))));
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(a.events as usize)));
    let started = Instant::now();
    let per_worker_interval = (a.rate > 0.0).then(|| Duration::from_secs_f64(a.concurrency as f64 / a.rate));
    let mut workers = vec![];
    let batch = a.batch.max(1) as u64;
    // Ids unique to this drive: a broker that deduplicates (JetStream's
    // Nats-Msg-Id window) must not drop a later round's events as repeats.
    let run = now_nanos();
    for w in 0..a.concurrency {
        let (client, url, payload, next, failed, lat, total) =
            (client.clone(), url.to_string(), payload.clone(), next.clone(), failed.clone(), lat.clone(), a.events);
        workers.push(tokio::spawn(async move {
            let mut ticker = per_worker_interval.map(|d| {
                let mut t =
                    tokio::time::interval_at(tokio::time::Instant::now() + d.mul_f64(w as f64 / 64.0_f64.max(1.0)), d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let mut local = Vec::new();
            loop {
                let i = next.fetch_add(batch, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let n = batch.min(total - i);
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let sent = now_nanos();
                let events: Vec<CloudEvent> = (0..n)
                    .map(|k| {
                        let mut ev =
                            CloudEvent::new(format!("bench-{run}-{}", i + k), "/spate/bench", "dev.spate.bench");
                        ev.datacontenttype = Some("application/json".into());
                        ev.data = Some(payload.clone());
                        ev.set_extension("benchsent", ExtValue::String(sent.to_string()));
                        ev
                    })
                    .collect();
                let mut h = http::HeaderMap::new();
                let body = if n == 1 {
                    spate_core::http_codec::encode_binary(&events[0], &mut h)
                } else {
                    spate_core::http_codec::encode_batch(&events, &mut h)
                };
                let t0 = Instant::now();
                match client.post(&url).headers(h).body(body).send().await {
                    Ok(r) if r.status().is_success() => local.push(t0.elapsed().as_nanos() as u64),
                    _ => {
                        failed.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            lat.lock().expect("lock").extend(local);
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed_ns = started.elapsed().as_nanos() as u64;
    let failed = failed.load(Ordering::Relaxed);
    let ack_latencies = std::mem::take(&mut *lat.lock().expect("lock"));
    LoadResult { acked: a.events - failed, failed, elapsed_ns, ack_latencies }
}

pub(crate) async fn apply(admin: &str, yaml: &str) -> anyhow::Result<()> {
    let r = reqwest::Client::new()
        .post(format!("{admin}/apply"))
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("apply failed: {}", r.text().await.unwrap_or_default());
    }
    Ok(())
}

pub async fn run(a: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    if a.events == 0 || a.concurrency == 0 {
        bail!("--events and --concurrency must be at least 1");
    }
    if a.rounds > 1 && (a.target != BenchTarget::Broker || a.stopped_subscriber) {
        bail!("--rounds applies to --target broker without --stopped-subscriber");
    }
    let sink = Sink::start(a.separate_processes).await?;
    let child = match &a.server {
        Some(_) => None,
        None => Some(start_server(&a)?),
    };
    let admin = a.server.clone().or_else(|| child.as_ref().map(|c| c.admin.clone())).expect("one of them");
    let hold = if a.stopped_subscriber {
        "  delivery:\n    retry: 1000000\n    backoffPolicy: linear\n    backoffDelay: PT1S\n"
    } else {
        ""
    };
    if a.target == BenchTarget::Service {
        let Some(c) = &child else { bail!("--target service needs the in-process server (no --server)") };
        return serving::run(&a, &admin, &c.data).await;
    }
    if a.target == BenchTarget::Channel {
        if a.triggers > 1 || a.stopped_subscriber {
            bail!("--triggers and --stopped-subscriber apply to --target broker");
        }
        return channel(&a, &sink, child, &admin).await;
    }
    let mut yaml = broker_with_bench_trigger("bench", a.max_in_flight, sink.url(), hold);
    for i in 1..a.triggers.max(1) {
        // Non-matching triggers: exact filters on other types, as in a broker shared by many functions.
        yaml.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: other-{i}\nspec:\n  broker: bench\n  filter:\n    attributes:\n      type: dev.spate.other.{i}\n  subscriber:\n    uri: {}\n",
            sink.url()
        ));
    }
    let reference = a.triggers > 1 && !a.stopped_subscriber;
    if reference {
        // The reference: the same trigger alone on a broker of its own, measured in each round.
        yaml.push_str("---\n");
        yaml.push_str(&broker_with_bench_trigger(ONE, a.max_in_flight, sink.url(), hold));
    }
    apply(&admin, &yaml).await.context("creating the bench broker and triggers")?;
    let broker_url = ingress_url(&admin, child.as_ref(), Kind::Broker, "bench").await?;
    let one_url = if reference { Some(ingress_url(&admin, child.as_ref(), Kind::Broker, ONE).await?) } else { None };
    let pid = child.as_ref().map(|c| c.child.id());
    let mode = if a.rate > 0.0 {
        format!("rate {} events/s", a.rate)
    } else {
        format!("closed loop, concurrency {}", a.concurrency)
    };
    println!(
        "spate bench: {} events of {} bytes, {mode}, batch {}, fsync {}, {} trigger(s) (one matches), broker class {}",
        a.events,
        a.size,
        a.batch,
        a.fsync,
        a.triggers.max(1),
        a.broker_class
    );
    println!(
        "sink {}; load generator {}",
        sink.describe(),
        if a.separate_processes { "in its own process for each phase" } else { "in the bench process" }
    );
    report_idle(pid).await;
    if a.stopped_subscriber {
        return backlog(&a, &sink, &broker_url, pid).await;
    }
    let title = match a.broker_class.as_str() {
        spate_api::NATS_BROKER_CLASS => "broker (ingress → JetStream → trigger → sink)",
        spate_api::KAFKA_BROKER_CLASS => "broker (ingress → Kafka → trigger → sink)",
        spate_api::RABBITMQ_BROKER_CLASS => "broker (ingress → RabbitMQ → trigger → sink)",
        _ => "broker (ingress → durable log → trigger → sink)",
    };
    let code = rounds(&a, &sink, &broker_url, one_url.as_deref(), pid, title).await?;
    if a.broker_class != spate_api::DEFAULT_BROKER_CLASS {
        // The bench brokers' streams and consumers go with them.
        for name in ["bench", ONE] {
            let url = format!("{admin}/apis/eventing.knative.dev/v1/namespaces/default/brokers/{name}");
            let _ = reqwest::Client::new().delete(url).send().await;
        }
    }
    Ok(code)
}

/// With `--triggers N` (N > 1): the broker where the bench trigger runs alone, the reference
/// against which the N triggers' rate is compared in the same run.
const ONE: &str = "bench-one-trigger";

/// Broker `name` with the bench trigger (`dev.spate.bench` events to the sink) named like it.
fn broker_with_bench_trigger(name: &str, max_in_flight: usize, sink: &str, delivery: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  annotations:\n    spate.dev/max-in-flight: \"{max_in_flight}\"\nspec:\n  broker: {name}\n  filter:\n    attributes:\n      type: dev.spate.bench\n  subscriber:\n    uri: {sink}\n{delivery}"
    )
}

/// The ingress URL of the broker or channel `name` in namespace `default`.
async fn ingress_url(admin: &str, child: Option<&Child_>, kind: Kind, name: &str) -> anyhow::Result<String> {
    Ok(match child {
        Some(c) if kind == Kind::Broker => format!("{}/default/{name}", c.data),
        Some(c) => format!("{}/channels/default/{name}", c.data),
        None => crate::client::address_url(admin, kind, "default", name).await?,
    })
}

/// The raw engine under a shared-engine class, measured in this run.
struct Raw {
    engine: &'static str,
    /// Events/s with the engine's defaults.
    rate: f64,
    /// Events/s with the engine set up as Spate sets it up, where that differs.
    as_spate: Option<f64>,
    /// What a broker that cost nothing itself could reach on this machine: the
    /// engine's work (as Spate sets it up) plus one HTTP request per delivery,
    /// each measured alone at full CPU, added per event.
    ceiling: f64,
}

impl Raw {
    /// Prints and returns the end-to-end rate's ratios to these baselines.
    fn report(&self, e2e: f64) -> Vec<(String, f64)> {
        let mut out = vec![(format!("end-to-end / raw {} throughput", self.engine), e2e / self.rate)];
        if let Some(r) = self.as_spate {
            out.push((format!("end-to-end / raw {} with Spate's stream settings", self.engine), e2e / r));
        }
        out.push(("end-to-end / the zero-cost broker's ceiling".to_string(), e2e / self.ceiling));
        out.push((
            format!("the zero-cost broker's ceiling / raw {} throughput", self.engine),
            self.ceiling / self.rate,
        ));
        for (label, r) in &out {
            println!("  {label}: {r:.2}");
        }
        out
    }
}

/// Per-event CPU adds up on a saturated machine: a broker that cost nothing
/// itself would still pay the engine's work (`engine` events/s alone) and one
/// HTTP delivery (`http` events/s alone) per event.
fn zero_cost_ceiling(engine: f64, http: f64) -> f64 {
    1.0 / (1.0 / engine + 1.0 / http)
}

async fn raw_baseline(a: &BenchArgs, sink: &Sink) -> anyhow::Result<Option<Raw>> {
    use nats::{RawStream, raw_jetstream};
    let cluster = bench_cluster();
    let (rate, engine, how) = match a.broker_class.as_str() {
        spate_api::NATS_BROKER_CLASS => (
            raw_jetstream(a, &a.nats_url, &format!("{cluster}-raw"), RawStream::Defaults).await?,
            "JetStream",
            "async-nats publish with ack + pull consume",
        ),
        spate_api::KAFKA_BROKER_CLASS => (
            raw::raw_kafka(a, &a.kafka_bootstrap_servers, &format!("{cluster}.raw")).await?,
            "Kafka",
            "rdkafka acks=all produce + group consume, 10 partitions",
        ),
        spate_api::RABBITMQ_BROKER_CLASS => (
            raw::raw_rabbit(a, &a.rabbitmq_url, &format!("{cluster}.raw")).await?,
            "RabbitMQ",
            "lapin confirmed persistent publish + consume with ack, quorum queue",
        ),
        _ => return Ok(None),
    };
    println!("\nraw {engine} baseline ({how}, same payloads)\n  throughput: {rate:.0} events/s");
    let mut as_spate = None;
    if a.broker_class == spate_api::NATS_BROKER_CLASS {
        let r = raw_jetstream(a, &a.nats_url, &format!("{cluster}-raws"), RawStream::AsSpate).await?;
        println!("  with Spate's stream settings (interest retention, a Nats-Msg-Id per publish): {r:.0} events/s");
        as_spate = Some(r);
    }
    // Each delivery is one request, whatever `--batch` the load sends.
    let one_per_request = BenchArgs { batch: 1, ..a.clone() };
    let title = "one event per request straight to the sink (the HTTP each delivery costs)";
    let http = baseline(&one_per_request, sink, sink.url(), title).await?;
    let ceiling = zero_cost_ceiling(as_spate.unwrap_or(rate), http);
    println!(
        "  the zero-cost broker's ceiling (raw {engine}{} and that HTTP, per event): {ceiling:.0} events/s",
        if as_spate.is_some() { " with Spate's settings" } else { "" }
    );
    Ok(Some(Raw { engine, rate, as_spate, ceiling }))
}

async fn report_idle(pid: Option<u32>) {
    if let Some(pid) = pid {
        tokio::time::sleep(Duration::from_millis(300)).await;
        println!("server idle RSS: {:.1} MiB", rss_kib(pid).unwrap_or(0) as f64 / 1024.0);
    }
}

/// Drives the load to `url` (a baseline in front of the sink); prints and returns its rate.
async fn baseline(a: &BenchArgs, sink: &Sink, url: &str, title: &str) -> anyhow::Result<f64> {
    sink.reset().await?;
    let r = load(a, url).await?;
    let complete = sink.wait_for(r.acked, Duration::from_secs(30)).await?;
    let rate = r.rate();
    println!(
        "\n{title}\n  throughput: {rate:.0} events/s ({} failed){}\n  request latency: {}",
        r.failed,
        if complete { "" } else { " (INCOMPLETE: not every event reached the sink)" },
        percentiles(r.ack_latencies)
    );
    Ok(rate)
}

/// `--rounds`: each round measures the engine's raw baselines (shared-engine
/// classes), then the sink's baselines and the broker, and prints its ratios;
/// with more than one round, each ratio's median follows.
async fn rounds(
    a: &BenchArgs,
    sink: &Sink,
    url: &str,
    one: Option<&str>,
    pid: Option<u32>,
    title: &str,
) -> anyhow::Result<std::process::ExitCode> {
    let n = a.rounds.max(1);
    let mut all: Vec<(String, Vec<f64>)> = vec![];
    let mut complete = true;
    for round in 1..=n {
        if n > 1 {
            println!("\n== round {round} of {n}");
        }
        let raw = raw_baseline(a, sink).await?;
        let alone = match one {
            Some(one) => {
                let t = through(a, sink, one, 1, "the same broker path with its trigger alone").await?;
                complete &= t.complete;
                Some(t.rate)
            }
            None => None,
        };
        let m = measure(a, sink, url, pid, 1, title).await?;
        complete &= m.complete;
        let mut ratios = m.ratios;
        ratios.extend(m.tails);
        if let Some(raw) = raw {
            ratios.extend(raw.report(m.e2e));
        }
        if let Some(alone) = alone {
            let label = format!("end-to-end with {} triggers / with the trigger alone", a.triggers);
            println!("  {label}: {:.2}", m.e2e / alone);
            ratios.push((label, m.e2e / alone));
        }
        for (label, r) in ratios {
            match all.iter_mut().find(|(l, _)| *l == label) {
                Some((_, v)) => v.push(r),
                None => all.push((label, vec![r])),
            }
        }
    }
    if n > 1 {
        println!("\nmedians over {n} rounds");
        for (label, mut v) in all {
            v.sort_by(f64::total_cmp);
            let each: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
            println!("  {label}: {:.2} (rounds, sorted: {})", median(&v), each.join(" "));
        }
    }
    Ok(exit_code(complete))
}

/// A bench run fails when not every accepted event arrived.
fn exit_code(complete: bool) -> std::process::ExitCode {
    if complete { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
}

/// The median of sorted, non-empty `v`.
fn median(v: &[f64]) -> f64 {
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// One measurement: its end-to-end rate, whether every event arrived, and
/// its ratios to the sink's baselines (when they ran).
struct Measured {
    e2e: f64,
    complete: bool,
    /// The forwarding proxy's rate, when the baselines ran.
    proxy: Option<f64>,
    ratios: Vec<(String, f64)>,
    /// The broker path's p99 and p999 latencies (ms), for the medians over rounds.
    tails: Vec<(String, f64)>,
}

/// Runs the baselines (unless skipped), then the load through `url`, where
/// each accepted event should reach the sink `fanout` times.
async fn measure(
    a: &BenchArgs,
    sink: &Sink,
    url: &str,
    pid: Option<u32>,
    fanout: u64,
    title: &str,
) -> anyhow::Result<Measured> {
    let (mut baseline_rate, mut proxy_rate) = (None, None);
    if !a.no_baseline {
        baseline_rate = Some(baseline(a, sink, sink.url(), "baseline (straight to the sink)").await?);
        // The least an intermediary does: one forwarding hop, nothing stored.
        let proxy = proxy::start(sink.url()).await?;
        proxy_rate = Some(baseline(a, sink, &proxy.url, "forwarding proxy (hyper, one hop, nothing stored)").await?);
    }
    let t = through(a, sink, url, fanout, title).await?;
    let (e2e_rate, complete) = (t.rate, t.complete);
    let mut ratios = vec![];
    if let Some(b) = baseline_rate {
        ratios.push(("end-to-end deliveries / baseline throughput".to_string(), e2e_rate / b));
    }
    if let Some(p) = proxy_rate {
        ratios.push(("end-to-end deliveries / forwarding proxy throughput".to_string(), e2e_rate / p));
    }
    for (label, r) in &ratios {
        println!("  {label}: {r:.2}");
    }
    if let Some(pid) = pid {
        println!("  server RSS after the run: {:.1} MiB", rss_kib(pid).unwrap_or(0) as f64 / 1024.0);
    }
    Ok(Measured { e2e: e2e_rate, complete, proxy: proxy_rate, ratios, tails: t.tails() })
}

/// Drives the load through `url` and waits for its deliveries (`fanout` per
/// accepted event); prints the figures and returns the end-to-end rate in
/// deliveries/s and whether every delivery arrived.
async fn through(a: &BenchArgs, sink: &Sink, url: &str, fanout: u64, title: &str) -> anyhow::Result<Through> {
    sink.reset().await?;
    let started = now_nanos();
    let r = load(a, url).await?;
    let ingress_rate = r.rate();
    let complete = sink.wait_for(r.acked * fanout, Duration::from_secs(120)).await?;
    let report = sink.report().await?;
    let e2e_rate = report.received as f64 / (report.last_at.saturating_sub(started).max(1) as f64 / 1e9);
    println!("\n{title}");
    println!("  ingress throughput: {ingress_rate:.0} events/s ({} failed)", r.failed);
    let ingress = Quantiles::of(r.ack_latencies);
    println!("  ingress ack latency: {}", text(ingress));
    let per = if fanout > 1 {
        format!(" ({:.0} events/s in, × {fanout} deliveries)", e2e_rate / fanout as f64)
    } else {
        String::new()
    };
    println!(
        "  end-to-end throughput: {e2e_rate:.0} deliveries/s{per}{}",
        if complete { "" } else { " (INCOMPLETE: not every event arrived)" }
    );
    let e2e = Quantiles::of(report.latencies);
    println!("  end-to-end latency: {}", text(e2e));
    Ok(Through { rate: e2e_rate, complete, ingress, e2e })
}

/// What [`through`] measured: deliveries/s, whether every delivery arrived, and the latencies.
struct Through {
    rate: f64,
    complete: bool,
    ingress: Option<Quantiles>,
    e2e: Option<Quantiles>,
}

impl Through {
    /// The tail figures that `--rounds` reports the median of.
    fn tails(&self) -> Vec<(String, f64)> {
        let mut v = vec![];
        for (what, q) in [("ingress ack latency", self.ingress), ("end-to-end latency", self.e2e)] {
            if let Some(q) = q {
                v.push((format!("{what} p99 (ms)"), q.p99));
                v.push((format!("{what} p999 (ms)"), q.p999));
            }
        }
        v
    }
}

/// `--target channel`: one InMemoryChannel (on the durable log) with
/// `--subscriptions` subscriptions, each delivering every event to the sink.
async fn channel(
    a: &BenchArgs,
    sink: &Sink,
    child: Option<Child_>,
    admin: &str,
) -> anyhow::Result<std::process::ExitCode> {
    let n = a.subscriptions.max(1);
    let mut yaml =
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: bench\n".to_string();
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: bench-{i}\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    name: bench\n  subscriber:\n    uri: {}\n",
            sink.url()
        ));
    }
    if n > 1 {
        // The reference: a channel with one subscription, measured in the same run.
        yaml.push_str(&format!(
            "---\napiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: {ONE_SUB}\n---\napiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: {ONE_SUB}\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    name: {ONE_SUB}\n  subscriber:\n    uri: {}\n",
            sink.url()
        ));
    }
    apply(admin, &yaml).await.context("creating the bench channel and subscriptions")?;
    let url = ingress_url(admin, child.as_ref(), Kind::InMemoryChannel, "bench").await?;
    let pid = child.as_ref().map(|c| c.child.id());
    println!(
        "spate bench: {} events of {} bytes, concurrency {}, batch {}, fsync {}, channel with {n} subscription(s)",
        a.events, a.size, a.concurrency, a.batch, a.fsync
    );
    report_idle(pid).await;
    let one = if n > 1 {
        let one_url = ingress_url(admin, child.as_ref(), Kind::InMemoryChannel, ONE_SUB).await?;
        let t = through(a, sink, &one_url, 1, "the same channel path with one subscription").await?;
        Some((t.rate, t.complete))
    } else {
        None
    };
    let title = format!("channel (ingress → durable log → {n} subscription(s) → sink)");
    let m = measure(a, sink, &url, pid, n as u64, &title).await?;
    if let Some((one_rate, one_complete)) = one {
        // N subscriptions can at best deliver N times one's rate, and no more than a
        // forwarding proxy moves to the same sink.
        let ideal = n as f64 * one_rate;
        let (bound, what) = match m.proxy {
            Some(p) if p < ideal => (p, "the forwarding proxy".to_string()),
            _ => (ideal, format!("{n} × the 1-subscription rate")),
        };
        println!(
            "  deliveries with {n} subscriptions / min({n} × the 1-subscription rate, forwarding proxy): {:.2} (bound: {what}, {bound:.0}/s)",
            m.e2e / bound
        );
        return Ok(exit_code(m.complete && one_complete));
    }
    Ok(exit_code(m.complete))
}

/// With `--subscriptions N` (N > 1): the channel where one subscription runs alone.
const ONE_SUB: &str = "bench-one-subscription";

/// Fills the log behind a subscriber that refuses everything, sampling RSS.
async fn backlog(
    a: &BenchArgs,
    sink: &Sink,
    broker_url: &str,
    pid: Option<u32>,
) -> anyhow::Result<std::process::ExitCode> {
    let Some(pid) = pid else { bail!("--stopped-subscriber needs the in-process server (no --server)") };
    sink.answer(503).await?;
    println!("\nbacklog behind a stopped subscriber (RSS sampled every {} events)", a.events / 5);
    let step = BenchArgs { events: a.events / 5, no_baseline: true, ..a.clone() };
    let mut total = 0;
    for _ in 0..5 {
        let r = load(&step, broker_url).await?;
        total += r.acked;
        println!(
            "  {total:>9} events waiting: server RSS {:.1} MiB ({:.0} events/s in)",
            rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
            r.rate()
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect(); // 1..1000 ms
        let s = super::percentiles(v);
        assert!(s.starts_with("p50 500.") && s.contains("p99 990.") && s.contains("max 1000."), "{s}");
        assert_eq!(super::percentiles(vec![]), "n/a");
    }
}
