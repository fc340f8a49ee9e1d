//! NATS itself restarted under load: a private nats-server (JetStream, file
//! storage) is killed and started again on the same port and store.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

struct PrivateNats {
    child: Child,
    port: u16,
    store: Option<tempfile::TempDir>,
}

impl PrivateNats {
    fn start(port: u16, store: tempfile::TempDir) -> Option<PrivateNats> {
        let bin =
            ["/usr/sbin/nats-server", "/usr/bin/nats-server"].into_iter().find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(std::env::var_os("CI").is_none(), "nats-server is not installed (CI needs it)");
            eprintln!("skipping: nats-server is not installed");
            return None;
        };
        let mut child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(PrivateNats { child, port, store: Some(store) });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nats-server did not start on port {port}");
    }

    fn kill(mut self) -> (u16, tempfile::TempDir) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.port, self.store.take().expect("store"))
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_under_load_loses_no_acknowledged_event_and_ingress_says_503_meanwhile() {
    let Some(nats) = PrivateNats::start(free_port(), tempdir()) else { return };
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let dir = tempdir();
    let s = Server::start(
        dir.path(),
        &[
            "--nats-url",
            &url,
            "--cluster-name",
            "outage",
            "--default-broker-class",
            "NatsJetStreamBroker",
            "--ack-wait-seconds",
            "2",
        ],
    );
    let sink = Sink::start().await;
    s.apply_ok(&[broker("default", ""), trigger("t", "default", "", &sink.url, "")].join("---\n")).await;
    let ingress = s.broker_url("default", "default");

    const TOTAL: u64 = 2000;
    let next = Arc::new(AtomicU64::new(0));
    let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let unavailable = Arc::new(AtomicU64::new(0));
    let retry_after_seen = Arc::new(AtomicBool::new(false));
    let mut senders = vec![];
    for _ in 0..8 {
        let (next, accepted, unavailable, ra, ingress) =
            (next.clone(), accepted.clone(), unavailable.clone(), retry_after_seen.clone(), ingress.clone());
        senders.push(tokio::spawn(async move {
            let c = client();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= TOTAL {
                    return;
                }
                let id = format!("ev-{i}");
                loop {
                    let r = c
                        .post(&ingress)
                        .header("ce-specversion", "1.0")
                        .header("ce-id", &id)
                        .header("ce-source", "/outage")
                        .header("ce-type", "t")
                        .body("{}")
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 202 => {
                            accepted.lock().unwrap().insert(id.clone());
                            break;
                        }
                        Ok(r) if r.status() == 503 => {
                            unavailable.fetch_add(1, Ordering::SeqCst);
                            if r.headers().contains_key("retry-after") {
                                ra.store(true, Ordering::SeqCst);
                            }
                        }
                        _ => {}
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    sink.wait_until("a quarter of the events", |g| g.len() as u64 >= TOTAL / 4).await;
    let (port, store) = nats.kill();
    // While NATS is down, ingress answers 503 with Retry-After (awaited, not slept).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while unavailable.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no 503 while NATS was down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The broker's status says why, now (not only at the next reconcile).
    let path = "/apis/eventing.knative.dev/v1/namespaces/default/brokers/default";
    let down = s
        .wait_json(path, "broker not Ready while NATS is down", |v| {
            v.pointer("/status/conditions/0/status") == Some(&serde_json::json!("False"))
        })
        .await;
    assert_eq!(down.pointer("/status/conditions/0/reason"), Some(&serde_json::json!("StorageUnavailable")), "{down}");
    assert!(down.to_string().contains("not connected"), "{down}");
    let _nats = PrivateNats::start(port, store).expect("nats-server restarts");
    s.wait_json(path, "broker Ready again", |v| {
        v.pointer("/status/conditions/0/status") == Some(&serde_json::json!("True"))
    })
    .await;
    for t in senders {
        t.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let got = sink
        .wait_until("every acknowledged event", |g| {
            let ids: HashSet<&String> = g.iter().map(|r| &r.event.id).collect();
            accepted.iter().all(|id| ids.contains(id))
        })
        .await;
    println!(
        "NATS restarted under load: {} accepted, {} delivered, {} answers were 503 while it was down",
        accepted.len(),
        got.len(),
        unavailable.load(Ordering::SeqCst)
    );
    assert_eq!(accepted.len() as u64, TOTAL);
    assert!(retry_after_seen.load(Ordering::SeqCst), "503s carry Retry-After");
}

/// A NatsJetStreamBroker applied while NATS is down is not Ready (StorageUnavailable);
/// once NATS answers it is Ready with no new apply (the NATS client reconnects and the
/// stream is created on first use; engines that refuse the broker outright are covered by
/// the control plane's retry: `rabbit::a_broker_applied_while_rabbitmq_is_unreachable_...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_applied_while_its_engine_is_down_becomes_ready_when_it_comes_back() {
    let port = free_port();
    let dir = tempdir();
    let cluster = format!("late{}", std::process::id());
    let url = format!("nats://127.0.0.1:{port}");
    let s = Server::start(dir.path(), &["--nats-url", &url, "--cluster-name", &cluster]);
    let broker = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: late\n  annotations:\n    eventing.knative.dev/broker.class: NatsJetStreamBroker\n";
    s.apply_ok(broker).await;
    let path = "/apis/eventing.knative.dev/v1/namespaces/default/brokers/late";
    let ready = |v: &serde_json::Value| v.pointer("/status/conditions/0/status") == Some(&serde_json::json!("True"));
    let down = s.admin_json(path).await;
    assert!(!ready(&down), "no engine, not Ready: {down}");
    assert!(down.to_string().contains("StorageUnavailable"), "{down}");
    let Some(_nats) = PrivateNats::start(port, tempfile::tempdir().unwrap()) else { return };
    s.wait_json(path, "the broker Ready once NATS answers", ready).await;
    assert_eq!(send(&s.broker_url("default", "late"), "after", "t", "{}").await, 202);
}
