//! The fault suite's harness, shared by `fault_<backend>.rs`: load from
//! several senders (each event retried until it gets a 202, so "acked" is
//! exact), two Triggers on one Broker (a healthy one, and one whose
//! subscriber never answers one event: a stuck trigger beside a healthy
//! one), faults injected while the load runs, then a count per trigger and
//! per fault of what was acked, delivered, lost and delivered twice.
//!
//! The short plan runs in `.ci/run`; `SPATE_TORTURE=1` (what `scripts/torture`
//! sets) runs the long one: ten faults and more events.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

/// How much load and how many faults.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub events: u64,
    pub faults: usize,
    pub senders: usize,
    /// `--max-in-flight`: the bound on what one fault may deliver twice, per trigger.
    pub in_flight: usize,
    /// The least time between two faults: past the ack wait on a shared engine
    /// (it hands a dead instance's messages out after it), none on the embedded log.
    pub spacing: Duration,
}

impl Plan {
    /// Short in CI, long under `SPATE_TORTURE=1`.
    pub fn from_env() -> Plan {
        if std::env::var_os("SPATE_TORTURE").is_some() {
            Plan { events: 60_000, faults: 10, senders: 32, in_flight: 100, spacing: ENGINE_SPACING }
        } else {
            Plan { events: 20_000, faults: 3, senders: 32, in_flight: 100, spacing: ENGINE_SPACING }
        }
    }

    /// For a backend without an ack wait (the embedded log redelivers as it restarts).
    pub fn unspaced(self) -> Plan {
        Plan { spacing: Duration::ZERO, ..self }
    }
}

/// `--ack-wait-seconds` of every server in the suite: how soon a shared engine
/// hands a killed instance's messages to another; faults are spaced past it.
pub const ACK_WAIT_SECONDS: u64 = 2;
const ENGINE_SPACING: Duration = Duration::from_secs(ACK_WAIT_SECONDS + 2);

/// The stuck trigger's subscriber never answers this event.
pub const STUCK_ID: &str = "ev-100";

/// The senders' pace, all together (events per second): above the 1,500 the suite must
/// hold, and bounded, so that a backend whose ingress is far faster than its
/// consumers after a fault (Kafka) does not pile up more than the run can drain.
const RATE: f64 = 2_500.0;

/// One trigger's counts over the whole run, with duplicates split by fault.
#[derive(Debug)]
pub struct Tally {
    pub trigger: &'static str,
    pub acked: usize,
    pub delivered: usize,
    pub lost: Vec<String>,
    /// Deliveries of an already-received id after fault k (index k).
    pub duplicates_per_fault: Vec<usize>,
    /// Duplicates before the first fault (there should be none).
    pub duplicates_without_fault: usize,
    /// Second copies of events a sender posted again after an unanswered attempt.
    pub reposted: usize,
    /// How many deliveries the trigger's subscriber had received when each fault hit.
    pub received_at_fault: Vec<usize>,
}

/// Senders that post `plan.events` distinct events to `urls` (round robin per
/// sender), each retried until a 202: the set of acked ids is exact.
pub struct Load {
    pub acked: Arc<std::sync::Mutex<HashSet<String>>>,
    /// Ids a sender posted again after an attempt that got no answer at all (the
    /// server may have stored it before it died): their second copy is the
    /// sender's doing, not a redelivery, and is counted apart.
    pub reposted: Arc<std::sync::Mutex<HashSet<String>>>,
    pub count: Arc<AtomicU64>,
    /// Set once the load may end: senders run until then (past `plan.events`
    /// if the faults take longer), so every fault comes under load.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Acked events when the last fault hit.
    at_last_fault: AtomicU64,
    last_fault: std::sync::Mutex<Option<Instant>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    pub fn start(urls: Vec<String>, plan: Plan) -> Load {
        let next = Arc::new(AtomicU64::new(0));
        let acked: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
        let reposted: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let urls = Arc::new(urls);
        let paced_from = tokio::time::Instant::now();
        let handles = (0..plan.senders)
            .map(|s| {
                let (next, acked, count, urls) = (next.clone(), acked.clone(), count.clone(), urls.clone());
                let (reposted, stop) = (reposted.clone(), stop.clone());
                tokio::spawn(async move {
                    let c = client();
                    loop {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep_until(paced_from + Duration::from_secs_f64(i as f64 / RATE)).await;
                        let id = format!("ev-{i}");
                        let mut attempt = 0usize;
                        loop {
                            let url = &urls[(s + attempt) % urls.len()];
                            attempt += 1;
                            let r = c
                                .post(url)
                                .header("ce-specversion", "1.0")
                                .header("ce-id", &id)
                                .header("ce-source", "/faults")
                                .header("ce-type", "t")
                                .body("{}")
                                .send()
                                .await;
                            match &r {
                                Ok(r) if r.status() == 202 => {
                                    acked.lock().unwrap().insert(id.clone());
                                    count.fetch_add(1, Ordering::SeqCst);
                                    break;
                                }
                                // A refused connection stored nothing; a failure mid-request may
                                // have, and so may a 5xx (an engine that stored the event but whose
                                // confirmation was lost to the fault): the next copy is the sender's.
                                Err(e) if !e.is_connect() => {
                                    reposted.lock().unwrap().insert(id.clone());
                                }
                                Ok(r) if r.status().is_server_error() => {
                                    reposted.lock().unwrap().insert(id.clone());
                                }
                                _ => {}
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        let last_fault = Default::default();
        Load {
            acked,
            reposted,
            count,
            stop,
            at_last_fault: AtomicU64::new(0),
            last_fault,
            handles,
            started: Instant::now(),
        }
    }

    /// Waits until fault `k` is due: its share of the events acked, and the
    /// previous fault's redeliveries come (a shared engine hands a dead
    /// instance's messages out after the ack wait), so each duplicate is
    /// counted against the fault that caused it.
    pub async fn before_fault(&self, k: usize, plan: Plan) {
        let n = plan.events * (k as u64 + 1) / (plan.faults as u64 + 1);
        while self.count.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let last = *self.last_fault.lock().unwrap();
        if let Some(at) = last {
            tokio::time::sleep(plan.spacing.saturating_sub(at.elapsed())).await;
        }
        self.at_last_fault.store(self.count.load(Ordering::SeqCst), Ordering::SeqCst);
        *self.last_fault.lock().unwrap() = Some(Instant::now());
    }

    /// Lets the load end once `plan.events` are acked and the last fault has had
    /// its share of the load after it (senders run on until then, so no fault
    /// comes without load), then waits for every sender; what was acked, and
    /// the rate it was acked at.
    pub async fn finish(self, plan: Plan) -> (Acked, f64) {
        let share = plan.events / (plan.faults as u64 + 1);
        let enough = plan.events.max(self.at_last_fault.load(Ordering::SeqCst) + share);
        while self.count.load(Ordering::SeqCst) < enough {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            h.await.unwrap();
        }
        let secs = self.started.elapsed().as_secs_f64();
        let ids = self.acked.lock().unwrap().clone();
        let rate = ids.len() as f64 / secs;
        (Acked { ids, reposted: self.reposted.lock().unwrap().clone() }, rate)
    }
}

/// The ids acked, and those a sender may have had stored twice (see [`Load::reposted`]).
pub struct Acked {
    pub ids: HashSet<String>,
    pub reposted: HashSet<String>,
}

/// The two sinks and the manifests of the broker and its two triggers.
pub struct Subscribers {
    pub healthy: Sink,
    pub stuck: Sink,
}

impl Subscribers {
    pub async fn start() -> Subscribers {
        Subscribers { healthy: Sink::start().await, stuck: Sink::stuck_on(STUCK_ID).await }
    }

    /// A Broker `default` (of the server's default class) and Triggers `healthy` and `stuck`.
    pub fn manifests(&self, in_flight: usize) -> String {
        let t = |name: &str, url: &str| {
            format!(
                "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  annotations:\n    spate.dev/max-in-flight: \"{in_flight}\"\nspec:\n  broker: default\n  subscriber:\n    uri: {url}\n"
            )
        };
        [broker("default", ""), t("healthy", &self.healthy.url), t("stuck", &self.stuck.url)].join("---\n")
    }

    /// How many events each sink had received when fault k happened (call it at each fault).
    pub fn mark(&self) -> (usize, usize) {
        (self.healthy.count(), self.stuck.count())
    }

    /// Waits until both triggers deliver, so the faults hit deliveries in progress
    /// (a consumer group may take seconds to get its partitions).
    pub async fn flowing(&self) {
        self.healthy.wait_for(1).await;
        self.stuck.wait_for(1).await;
    }

    /// Waits until both sinks hold every acked id, then counts. The wait is a
    /// safety net (the deadline names what is missing), not the synchronisation.
    pub async fn tally(&self, acked: &Acked, marks: &[(usize, usize)], within: Duration) -> Vec<Tally> {
        let mut out = vec![];
        for (trigger, sink, pick) in [("healthy", &self.healthy, 0usize), ("stuck", &self.stuck, 1usize)] {
            let deadline = Instant::now() + within;
            loop {
                let got: HashSet<String> = sink.events().into_iter().map(|r| r.event.id).collect();
                if acked.ids.iter().all(|id| got.contains(id)) || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let got = sink.events();
            let at: Vec<usize> = marks.iter().map(|m| if pick == 0 { m.0 } else { m.1 }).collect();
            out.push(count(trigger, acked, &got, &at));
        }
        out
    }
}

fn count(trigger: &'static str, acked: &Acked, got: &[Received], marks: &[usize]) -> Tally {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut per_fault = vec![0usize; marks.len()];
    let mut without = 0;
    let mut reposted = 0;
    for (i, r) in got.iter().enumerate() {
        if !seen.insert(r.event.id.as_str()) {
            if acked.reposted.contains(&r.event.id) {
                reposted += 1;
                continue;
            }
            match marks.iter().rposition(|&at| i >= at) {
                Some(k) => per_fault[k] += 1,
                None => without += 1,
            }
        }
    }
    let mut lost: Vec<String> = acked.ids.iter().filter(|id| !seen.contains(id.as_str())).cloned().collect();
    lost.sort();
    Tally {
        trigger,
        reposted,
        received_at_fault: marks.to_vec(),
        acked: acked.ids.len(),
        delivered: seen.len(),
        lost,
        duplicates_per_fault: per_fault,
        duplicates_without_fault: without,
    }
}

/// The most duplicates one fault may cause per trigger; `None` where no bound
/// holds (each caller says why).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub healthy: Option<usize>,
    pub stuck: Option<usize>,
}

impl Bounds {
    pub fn both(n: usize) -> Bounds {
        Bounds { healthy: Some(n), stuck: Some(n) }
    }
}

/// Prints the table (one row per trigger and fault) and checks the contract:
/// nothing acked is lost, and no fault makes a trigger deliver more than
/// `bound` events twice (the in-flight bound, for every fault Spate can
/// bound; `None` where the engine's own durability decides, see the caller).
pub fn report(backend: &str, fault: &str, rate: f64, tallies: &[Tally], bounds: Bounds) {
    println!("fault suite: {backend}, {fault}: acked at {rate:.0} events/s");
    let shown = |b: Option<usize>| b.map_or("none".to_string(), |b| b.to_string());
    println!(
        "| backend | fault | trigger | fault # (received by then) | acked | delivered | lost | re-posted by senders | duplicates (bound: healthy {}, stuck {}) |",
        shown(bounds.healthy),
        shown(bounds.stuck)
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for t in tallies {
        for (k, d) in t.duplicates_per_fault.iter().enumerate() {
            let first = |v: String| if k == 0 { v } else { String::new() };
            println!(
                "| {backend} | {fault} | {} | {} ({}) | {} | {} | {} | {} | {d} |",
                t.trigger,
                k + 1,
                t.received_at_fault[k],
                first(t.acked.to_string()),
                first(t.delivered.to_string()),
                first(t.lost.len().to_string()),
                first(t.reposted.to_string()),
            );
        }
    }
    let mut problems = vec![];
    for t in tallies {
        if !t.lost.is_empty() {
            let shown = &t.lost[..t.lost.len().min(10)];
            problems.push(format!("{}: {} acked event(s) never delivered: {shown:?}", t.trigger, t.lost.len()));
        }
        if t.duplicates_without_fault > 0 {
            problems.push(format!("{}: {} duplicate(s) before any fault", t.trigger, t.duplicates_without_fault));
        }
        for (k, d) in t.duplicates_per_fault.iter().enumerate() {
            let bound = if t.trigger == "stuck" { bounds.stuck } else { bounds.healthy };
            if let Some(bound) = bound.filter(|b| d > b) {
                problems.push(format!("{}: fault {}: {d} duplicates exceed the bound {bound}", t.trigger, k + 1));
            }
        }
    }
    assert!(problems.is_empty(), "{backend}, {fault}:\n{}", problems.join("\n"));
}

/// The arguments every fault test's servers get besides `args`: the in-flight bound and the ack wait.
pub fn server_args(mut args: Vec<String>, plan: Plan) -> Vec<String> {
    args.extend([
        "--max-in-flight".into(),
        plan.in_flight.to_string(),
        "--ack-wait-seconds".into(),
        ACK_WAIT_SECONDS.to_string(),
    ]);
    args
}

/// Runs the load against `urls`, waits until both triggers deliver, injects
/// `fault` `plan.faults` times (spaced, each after its share of the load; the
/// sinks' counts are marked just before it), then waits for every acked event
/// and counts. Returns the counts and the rate events were acked at.
pub async fn under_load(
    subs: &Subscribers,
    urls: Vec<String>,
    plan: Plan,
    mut fault: impl FnMut(),
) -> (Vec<Tally>, f64) {
    let load = Load::start(urls, plan);
    subs.flowing().await;
    let mut marks = vec![];
    for k in 0..plan.faults {
        load.before_fault(k, plan).await;
        marks.push(subs.mark());
        fault();
    }
    let (acked, rate) = load.finish(plan).await;
    (subs.tally(&acked, &marks, Duration::from_secs(180)).await, rate)
}

/// Kills `spate serve` with SIGKILL `plan.faults` times under load and
/// restarts it on the same addresses and data dir.
pub async fn kill_spate(backend: &str, args: Vec<String>, plan: Plan, bounds: Bounds) {
    let subs = Subscribers::start().await;
    let dir = tempdir();
    let (listen, admin) = (free_addr(), free_addr());
    let args = server_args(args, plan);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start_on(dir.path(), &listen, &admin, &args);
    server.apply_ok(&subs.manifests(plan.in_flight)).await;
    let url = server.broker_url("default", "default");
    let (tallies, rate) = under_load(&subs, vec![url], plan, || {
        server.kill();
        server = Server::start_on(dir.path(), &listen, &admin, &args);
    })
    .await;
    report(backend, "kill -9 of spate", rate, &tallies, bounds);
    drop(server);
}

pub fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// A TCP proxy between Spate and an engine, so a test can cut every
/// connection at once (a network fault) while the engine keeps running.
pub struct Proxy {
    pub addr: String,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (target, held) = (target.to_string(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { addr, conns, accept }
    }

    /// Drops every open connection (both directions, at once); new ones are accepted.
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Cuts Spate's connections to its engine `plan.faults` times under load (through `proxy`).
pub async fn cut_engine_connections(backend: &str, args: Vec<String>, proxy: &Proxy, plan: Plan, bounds: Bounds) {
    let subs = Subscribers::start().await;
    let dir = tempdir();
    let args = server_args(args, plan);
    let server = Server::start(dir.path(), &args.iter().map(String::as_str).collect::<Vec<_>>());
    server.apply_ok(&subs.manifests(plan.in_flight)).await;
    let url = server.broker_url("default", "default");
    let (tallies, rate) = under_load(&subs, vec![url], plan, || proxy.cut()).await;
    report(backend, "connections to the engine cut", rate, &tallies, bounds);
    drop(server);
}

/// The server arguments of `class` for test `test`, or `None` (a skip, said on
/// stderr) when its engine is absent on a developer machine; under `CI` an absent
/// engine fails the test.
pub fn engine_args(class: Class, test: &str, absent: &str) -> Option<Vec<String>> {
    match class_args(class, test) {
        Some((args, _)) => Some(args),
        None => {
            assert!(std::env::var_os("CI").is_none(), "{absent}");
            eprintln!("skipping: {absent}");
            None
        }
    }
}
