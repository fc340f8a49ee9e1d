//! Several `spate serve` instances on one NATS (`--config-store nats`,
//! NatsJetStreamBroker): shared resources, shared consumers, crashes.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// `n` instances of one cluster, each with its own data directory.
/// Fields drop in order: servers stop before their NATS resources are deleted.
struct Cluster {
    servers: Vec<Server>,
    dirs: Vec<tempfile::TempDir>,
    extra: Vec<String>,
    _nats: NatsCluster,
}

impl Cluster {
    fn start(test: &str, n: usize, extra: &[&str]) -> Option<Cluster> {
        if !nats_available() {
            return None;
        }
        let nats = NatsCluster::new(test);
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(nats.args());
        extra.extend(["--config-store".into(), "nats".into()]);
        let mut c = Cluster { servers: vec![], dirs: vec![], extra, _nats: nats };
        for _ in 0..n {
            let dir = tempdir();
            c.servers.push(c.start_in(&dir));
            c.dirs.push(dir);
        }
        Some(c)
    }

    fn start_in(&self, dir: &tempfile::TempDir) -> Server {
        Server::start(dir.path(), &self.extra.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Kills instance `i` with SIGKILL and starts it again on the same data directory.
    fn restart(&mut self, i: usize) {
        self.servers[i].kill();
        self.servers[i] = self.start_in(&self.dirs[i]);
    }
}

fn delivered_by(metrics: &str, sender: &str) -> u64 {
    let prefix = format!("spate_events_delivered_total{{sender=\"{sender}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

async fn trigger_ready_on(s: &Server, name: &str) -> Duration {
    let t = Instant::now();
    s.wait_json(&format!("/apis/eventing.knative.dev/v1/namespaces/default/triggers/{name}"), "trigger Ready", |v| {
        v.pointer("/status/conditions/0/status") == Some(&serde_json::json!("True"))
    })
    .await;
    t.elapsed()
}

/// Sends ids `from..to` spread over the instances' ingresses, retrying each
/// on another instance until one answers 202 (an instance may be down).
async fn send_spread(urls: Arc<Vec<String>>, from: u64, to: u64, concurrency: usize) -> u64 {
    let next = Arc::new(AtomicU64::new(from));
    let mut tasks = vec![];
    for _ in 0..concurrency {
        let (next, urls) = (next.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut attempts = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= to {
                    return attempts;
                }
                let mut k = i as usize;
                loop {
                    attempts += 1;
                    let r = c
                        .post(&urls[k % urls.len()])
                        .header("ce-specversion", "1.0")
                        .header("ce-id", format!("ev-{i}"))
                        .header("ce-source", "/cluster")
                        .header("ce-type", "t")
                        .body("{}")
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    if matches!(r, Ok(ref r) if r.status() == 202) {
                        break;
                    }
                    k += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let mut attempts = 0;
    for t in tasks {
        attempts += t.await.unwrap();
    }
    attempts
}

fn counts(got: &[Received]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in got {
        *m.entry(r.event.id.clone()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_resources_and_split_the_work_exactly_once() {
    let Some(c) = Cluster::start("share", 3, &[]) else { return };
    let sink = Sink::start().await;
    let other = Sink::start().await;
    c.servers[0]
        .apply_ok(
            &[
                broker("default", ""),
                trigger("t", "default", "", &sink.url, ""),
                trigger("fence", "default", "", &other.url, ""),
            ]
            .join("---\n"),
        )
        .await;
    // Applied on one instance, visible (and Ready) on every other.
    for s in &c.servers[1..] {
        let took = trigger_ready_on(s, "t").await;
        println!("trigger Ready on another instance after {took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    let urls: Arc<Vec<String>> = Arc::new(c.servers.iter().map(|s| s.broker_url("default", "default")).collect());
    send_spread(urls.clone(), 0, 3000, 32).await;
    let got = sink.wait_until("3000 distinct events", |g| counts(g).len() >= 3000).await;
    let m = counts(&got);
    let dups: usize = m.values().map(|n| n - 1).sum();
    assert_eq!(dups, 0, "exactly once without faults: {dups} duplicates");
    let mut shares = vec![];
    for s in &c.servers {
        shares.push(delivered_by(&s.metrics().await, "trigger/default/t"));
    }
    println!("deliveries per instance: {shares:?}");
    assert_eq!(shares.iter().sum::<u64>(), 3000, "{shares:?}");
    assert!(shares.iter().filter(|n| **n > 0).count() >= 2, "at least two instances deliver a share: {shares:?}");

    // A trigger deleted on one instance stops on all: after the fence trigger
    // sees a marker, the deleted trigger has received nothing more.
    let r = client()
        .delete(format!("{}/apis/eventing.knative.dev/v1/namespaces/default/triggers/t", c.servers[2].admin))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for s in &c.servers {
        s.wait_json("/apis/eventing.knative.dev/v1/namespaces/default/triggers", "trigger t gone", |v| {
            !v.to_string().contains("\"name\":\"t\"")
        })
        .await;
    }
    let before = sink.count();
    send_spread(urls, 5000, 5030, 4).await;
    let late: HashSet<String> = (5000..5030).map(|i| format!("ev-{i}")).collect();
    other
        .wait_until("the 30 late events at the fence trigger", |g| {
            g.iter().filter(|r| late.contains(&r.event.id)).map(|r| &r.event.id).collect::<HashSet<_>>().len() >= 30
        })
        .await;
    assert_eq!(sink.count(), before, "a deleted trigger delivers nothing on any instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_instance_under_load_loses_nothing_and_it_rejoins() {
    const IN_FLIGHT: usize = 20;
    let Some(mut c) = Cluster::start("kill", 3, &["--ack-wait-seconds", "2"]) else { return };
    let sink = Sink::start().await;
    let t = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  annotations:\n    spate.dev/max-in-flight: \"{IN_FLIGHT}\"\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n",
        sink.url
    );
    c.servers[0].apply_ok(&[broker("default", ""), t].join("---\n")).await;
    for s in &c.servers[1..] {
        trigger_ready_on(s, "t").await;
    }
    let urls: Arc<Vec<String>> = Arc::new(c.servers.iter().map(|s| s.broker_url("default", "default")).collect());
    let load = tokio::spawn(send_spread(urls.clone(), 0, 3000, 16));
    sink.wait_until("a third of the events", |g| g.len() >= 1000).await;
    c.restart(1);
    load.await.unwrap();
    let got = sink.wait_until("every accepted event", |g| counts(g).len() >= 3000).await;
    let m = counts(&got);
    let dups: usize = m.values().map(|n| n - 1).sum();
    println!("kill -9 of one of three instances: 3000 accepted, all delivered, {dups} duplicates (bound {IN_FLIGHT})");
    assert_eq!((0..3000).filter(|i| !m.contains_key(&format!("ev-{i}"))).count(), 0);
    assert!(dups <= IN_FLIGHT, "{dups} duplicates exceed the in-flight bound {IN_FLIGHT}");
    // The restarted instance rejoins: it serves ingress and takes a share again.
    trigger_ready_on(&c.servers[1], "t").await;
    let before = delivered_by(&c.servers[1].metrics().await, "trigger/default/t");
    let only_one = Arc::new(vec![c.servers[1].broker_url("default", "default")]);
    send_spread(only_one, 10_000, 10_300, 8).await;
    // Exactly these ids (a prefix would also match ev-10, ev-100… of the first batch).
    let late: HashSet<String> = (10_000..10_300).map(|i| format!("ev-{i}")).collect();
    sink.wait_until("the 300 late events", |g| {
        g.iter().filter(|r| late.contains(&r.event.id)).map(|r| &r.event.id).collect::<HashSet<_>>().len() >= 300
    })
    .await;
    let after = delivered_by(&c.servers[1].metrics().await, "trigger/default/t");
    println!("the restarted instance delivered {} of the late events", after - before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_ping_source_ticks_once_per_second_across_three_instances() {
    let Some(c) = Cluster::start("ping", 3, &[]) else { return };
    let sink = Sink::start().await;
    c.servers[1]
        .apply_ok(&format!(
            "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: tick\nspec:\n  schedule: \"* * * * * *\"\n  data: x\n  sink:\n    uri: {}\n",
            sink.url
        ))
        .await;
    // Six ticks; by the sixth, any duplicate of the first five would have arrived too
    // (every instance fires at the same second and claims before emitting).
    let got = sink.wait_for(6).await;
    let times: Vec<String> = got.iter().filter_map(|r| r.event.time.clone()).collect();
    let first_five: HashSet<&String> = times.iter().take(5).collect();
    let copies = times.iter().filter(|t| first_five.contains(t)).count();
    println!("ping across three instances: {} events for ticks {:?}", got.len(), &times[..times.len().min(6)]);
    assert_eq!(first_five.len(), 5, "five distinct ticks: {times:?}");
    assert_eq!(copies, 5, "each tick emitted once across the cluster: {times:?}");
}

/// Pids of ContainerSource processes recorded in an instance's data directory.
fn container_pids(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("sources/instances"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_source_runs_on_one_instance_and_moves_when_its_holder_dies() {
    let Some(mut c) = Cluster::start("lease", 3, &[]) else { return };
    let sink = Sink::start().await;
    let script = serde_json::to_string(
        "import os, time, urllib.request\nwhile True:\n    req = urllib.request.Request(os.environ['K_SINK'], data=b'{}', headers={'ce-specversion': '1.0', 'ce-id': str(time.time_ns()), 'ce-source': '/p', 'ce-type': 'tick', 'ce-pid': str(os.getpid()), 'content-type': 'application/json'})\n    try:\n        urllib.request.urlopen(req, timeout=5).read()\n    except Exception:\n        pass\n    time.sleep(0.05)\n",
    )
    .unwrap();
    c.servers[0]
        .apply_ok(&format!(
            "apiVersion: sources.knative.dev/v1\nkind: ContainerSource\nmetadata:\n  name: poster\nspec:\n  template:\n    spec:\n      containers:\n        - name: poster\n          command: [\"python3\", \"-c\", {script}]\n  sink:\n    uri: {}\n",
            sink.url
        ))
        .await;
    let pid = |r: &Received| r.event.extension("pid").map(|v| v.to_canonical().into_owned()).unwrap_or_default();
    let first = sink.wait_for(20).await;
    let pids: HashSet<String> = first.iter().map(pid).collect();
    assert_eq!(pids.len(), 1, "one process in the whole cluster: {pids:?}");
    let holders: Vec<usize> = (0..3).filter(|i| !container_pids(c.dirs[*i].path()).is_empty()).collect();
    assert_eq!(holders.len(), 1, "exactly one instance runs it: {holders:?}");
    let holder = holders[0];
    let old = pids.into_iter().next().unwrap();
    // The holder dies; its process dies with it (PDEATHSIG), and the lease moves.
    c.servers[holder].kill();
    let t = Instant::now();
    let moved = sink.wait_until("an event from a new process", |g| g.iter().any(|r| pid(r) != old)).await;
    println!("the ContainerSource moved to another instance {:?} after its holder's kill -9", t.elapsed());
    let new = pid(moved.iter().find(|r| pid(r) != old).unwrap());
    let others: Vec<usize> =
        (0..3).filter(|i| *i != holder && container_pids(c.dirs[*i].path()).contains(&new)).collect();
    assert_eq!(others.len(), 1, "exactly one surviving instance took it over");
    c.restart(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_joins_later_names_revisions_as_the_cluster_does() {
    let Some(mut c) = Cluster::start("revs", 2, &[]) else { return };
    let service = |v: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: fn\nspec:\n  template:\n    spec:\n      containers:\n        - command: [python3, -c, 'print(1)']\n          env:\n            - name: VERSION\n              value: \"{v}\"\n"
        )
    };
    let path = "/apis/serving.knative.dev/v1/namespaces/default/services/fn";
    let latest = |want: &'static str| {
        move |v: &serde_json::Value| v.pointer("/status/latestCreatedRevisionName") == Some(&serde_json::json!(want))
    };
    c.servers[0].apply_ok(&service("1")).await;
    c.servers[0].wait_json(path, "revision 1", latest("fn-00001")).await;
    c.servers[0].apply_ok(&service("2")).await;
    for s in &c.servers {
        s.wait_json(path, "revision 2 everywhere", latest("fn-00002")).await;
    }
    // A third instance with an empty data directory: it has seen only the second template,
    // and still calls it fn-00002 (the shared history), not fn-00001.
    let dir = tempdir();
    let late = c.start_in(&dir);
    late.wait_json(path, "the late instance's revision name", latest("fn-00002")).await;
    c.servers.push(late);
    c.dirs.push(dir);
    c.restart(0);
}

/// The raw value of `key` in this cluster's resources bucket, as NATS holds it.
async fn raw_resource(cluster: &str, key: &str) -> Vec<u8> {
    let client = async_nats::connect(nats_url()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(format!("KV_{cluster}-resources")).await.expect("the resources bucket");
    let msg = stream.get_last_raw_message_by_subject(&format!("$KV.{cluster}-resources.{key}")).await.expect(key);
    msg.payload.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_in_the_shared_store_and_open_on_every_instance() {
    let keys = tempdir();
    let key_file = keys.path().join("secret.key");
    std::fs::write(&key_file, "0123456789abcdef".repeat(4)).unwrap();
    let Some(c) = Cluster::start("sealed", 2, &["--secret-key-file", key_file.to_str().unwrap()]) else { return };
    // "hunter2-hunter2" in base64, as a Secret's data holds it.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: gh}\ndata: {token: aHVudGVyMi1odW50ZXIy}\n";
    c.servers[0].apply_ok(secret).await;
    let raw = raw_resource(&c._nats.name, "Secret.default.gh").await;
    assert!(raw.starts_with(b"SPSEAL1"), "sealed: {}", String::from_utf8_lossy(&raw));
    for needle in [&b"aHVudGVyMi1odW50ZXIy"[..], b"hunter2"] {
        assert!(!raw.windows(needle.len()).any(|w| w == needle), "no value in the clear");
    }
    // The other instance opens it: the Secret exists there, and a source could read it.
    c.servers[1]
        .wait_json("/apis/core/v1/namespaces/default/secrets/gh", "the Secret on instance 1", |v| {
            v["metadata"]["name"] == "gh"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_file_a_secret_is_not_stored_in_the_shared_store() {
    let Some(c) = Cluster::start("unsealed", 1, &[]) else { return };
    let (status, body) =
        c.servers[0].apply("apiVersion: v1\nkind: Secret\nmetadata: {name: gh}\nstringData: {token: hunter2}\n").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("--secret-key-file"), "{body}");
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(format!("KV_{}-resources", c._nats.name)).await.unwrap();
    let key = format!("$KV.{}-resources.Secret.default.gh", c._nats.name);
    assert!(stream.get_last_raw_message_by_subject(&key).await.is_err(), "nothing was written");
}

/// Reads a watch (newline-delimited JSON events) into a channel.
async fn watch_events(url: String) -> tokio::sync::mpsc::UnboundedReceiver<serde_json::Value> {
    let mut r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "watch {url}");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Ok(Some(chunk)) = r.chunk().await {
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if tx.send(serde_json::from_slice(&line).unwrap()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The store revision of a resourceVersion (`R` or `R.k`: k counts an instance's own status changes).
fn revision(v: &serde_json::Value) -> String {
    let rv = v["metadata"]["resourceVersion"].as_str().unwrap_or_else(|| panic!("no resourceVersion: {v}"));
    rv.split('.').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_one_instance_sees_writes_through_another_at_the_same_versions() {
    let Some(c) = Cluster::start("kubewatch", 2, &[]) else {
        assert!(std::env::var("CI").is_err(), "NATS must run under CI");
        eprintln!("skipped: no NATS on 127.0.0.1:4222");
        return;
    };
    let (a, b) = (&c.servers[0], &c.servers[1]);
    let path = "/apis/eventing.knative.dev/v1/namespaces/default/triggers";
    let list = a.admin_json(path).await;
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let mut events = watch_events(format!("{}{path}?watch=true&resourceVersion={rv}", a.admin)).await;
    let trigger = serde_json::json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "w"}, "spec": {"broker": "default", "subscriber": {"uri": "http://127.0.0.1:9/x"}}});
    let r = client().post(format!("{}{path}", b.admin)).json(&trigger).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let mut changed = created.clone();
    changed["spec"]["subscriber"]["uri"] = "http://127.0.0.1:9/y".into();
    let r = client().put(format!("{}{path}/w", b.admin)).json(&changed).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let replaced: serde_json::Value = r.json().await.unwrap();
    let r = client().delete(format!("{}{path}/w", b.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Instance A sees the three writes, in order, at the versions B wrote them at.
    let mut seen = vec![];
    while seen.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(30), events.recv()).await.expect("watch event").unwrap();
        if e["type"] == "MODIFIED"
            && revision(&e["object"]) == seen.last().map(|(_, r): &(String, String)| r.clone()).unwrap_or_default()
        {
            continue; // a status change of the same write
        }
        seen.push((e["type"].as_str().unwrap().to_string(), revision(&e["object"])));
    }
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"], "{seen:?}");
    assert_eq!(seen[0].1, revision(&created), "A's version of the create is B's");
    assert_eq!(seen[1].1, revision(&replaced), "A's version of the replace is B's");
}
