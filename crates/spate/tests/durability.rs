//! Restarts and crashes of a running `spate serve`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_undelivered_events_survive_a_restart() {
    let up = Arc::new(AtomicBool::new(false));
    let u = up.clone();
    let sink = Sink::with(
        Arc::new(move |_, _| {
            if u.load(Ordering::SeqCst) {
                StatusCode::ACCEPTED.into_response()
            } else {
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            }
        }),
        Duration::ZERO,
    )
    .await;
    let dir = tempdir();
    let mut s = Server::start(dir.path(), &[]);
    let retry = "  delivery:\n    retry: 1000\n    backoffPolicy: linear\n    backoffDelay: PT0.05S\n";
    s.apply_ok(&[broker("default", ""), trigger("t", "default", "", &sink.url, retry)].join("---\n")).await;
    let url = s.broker_url("default", "default");
    for i in 0..20 {
        assert_eq!(send(&url, &format!("e{i}"), "t", "{}").await, 202);
    }
    // The subscriber is refusing; wait until every event was attempted at least once.
    sink.wait_until("every event attempted", |g| {
        g.iter().map(|r| r.event.id.clone()).collect::<HashSet<_>>().len() == 20
    })
    .await;
    s.kill();

    up.store(true, Ordering::SeqCst);
    let before = sink.count();
    let s = Server::start(dir.path(), &[]);
    let b = s.get("brokers", "default", "default").await;
    assert_eq!(b["metadata"]["name"], "default", "the broker survived the restart");
    let t = s.get("triggers", "default", "t").await;
    assert_eq!(t["spec"]["delivery"]["retry"], 1000, "the trigger survived with its spec");
    // All 20 are delivered again by the restarted server, now that the subscriber accepts.
    let got = sink
        .wait_until("all 20 accepted after the restart", |g| {
            g[before.min(g.len())..].iter().map(|r| r.event.id.clone()).collect::<HashSet<_>>().len() == 20
        })
        .await;
    assert!(got.len() >= before + 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_accepted_event() {
    const TOTAL: u64 = 20_000;
    const KILLS: usize = 3;
    const IN_FLIGHT: usize = 100;
    // One event never gets an answer: it stays in flight across every kill,
    // and the events after it must not be sent again because of it.
    let sink = Sink::stuck_on("ev-500").await;
    let dir = tempdir();
    let (dp, ap) = (free_port(), free_port());
    let (listen, admin) = (format!("127.0.0.1:{dp}"), format!("127.0.0.1:{ap}"));
    let extra = ["--max-in-flight", "100"];
    let mut restarts_at = vec![];
    let mut server = Server::start_on(dir.path(), &listen, &admin, &extra);
    server.apply_ok(&[broker("default", ""), trigger("t", "default", "", &sink.url, "")].join("---\n")).await;
    let url = server.broker_url("default", "default");

    let next = Arc::new(AtomicU64::new(0));
    let accepted: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    let sent_ok = Arc::new(AtomicU64::new(0));
    let mut senders = vec![];
    for _ in 0..16 {
        let (next, accepted, url, sent_ok) = (next.clone(), accepted.clone(), url.clone(), sent_ok.clone());
        senders.push(tokio::spawn(async move {
            let c = client();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= TOTAL {
                    break;
                }
                let id = format!("ev-{i}");
                // Retry the same event until the server acknowledges it (it may be down).
                loop {
                    let r = c
                        .post(&url)
                        .header("ce-specversion", "1.0")
                        .header("ce-id", &id)
                        .header("ce-source", "/crash")
                        .header("ce-type", "t")
                        .body("{}")
                        .send()
                        .await;
                    if let Ok(r) = r
                        && r.status() == 202
                    {
                        accepted.lock().unwrap().insert(id.clone());
                        sent_ok.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for k in 0..KILLS {
        // Kill at evenly spread points of the load.
        let at = TOTAL * (k as u64 + 1) / (KILLS as u64 + 1);
        while sent_ok.load(Ordering::SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        restarts_at.push(sink.count());
        server = Server::start_on(dir.path(), &listen, &admin, &extra);
    }
    for s in senders {
        s.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len() as u64, TOTAL);
    let got = sink
        .wait_until("every accepted event", |g| {
            g.iter().map(|r| &r.event.id).collect::<HashSet<_>>().len() >= accepted.len()
        })
        .await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        *counts.entry(r.event.id.as_str()).or_default() += 1;
    }
    let missing = accepted.iter().filter(|id| !counts.contains_key(id.as_str())).count();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    // Duplicates per kill: deliveries after restart k of an id already received before.
    let mut per_kill = vec![0usize; KILLS];
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, r) in got.iter().enumerate() {
        if !seen.insert(r.event.id.as_str()) {
            let epoch = restarts_at.iter().rposition(|&at| i >= at);
            if let Some(k) = epoch {
                per_kill[k] += 1;
            }
        }
    }
    println!(
        "crash test: {} accepted, {} delivered, {missing} missing, {duplicates} duplicates after {KILLS} kill -9 (per kill: {per_kill:?}; bound {IN_FLIGHT} each, one event stuck throughout)",
        accepted.len(),
        got.len()
    );
    assert_eq!(missing, 0, "every event that got a 202 is delivered at least once");
    for (k, d) in per_kill.iter().enumerate() {
        assert!(*d <= IN_FLIGHT, "kill {k}: {d} duplicates exceed max-in-flight {IN_FLIGHT} ({per_kill:?})");
    }
    assert_eq!(per_kill.iter().sum::<usize>(), duplicates, "every duplicate follows a kill");
    drop(server);
}

/// A kill -9 in the middle of an event's retries does not give it a fresh
/// budget: the attempts made are part of the trigger's written position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_continues_an_events_retry_budget() {
    const RETRY: usize = 4;
    let sink = Sink::with(Arc::new(|_, _| StatusCode::INTERNAL_SERVER_ERROR.into_response()), Duration::ZERO).await;
    let dls = Sink::start().await;
    let dir = tempdir();
    let (dp, ap) = (free_port(), free_port());
    let (listen, admin) = (format!("127.0.0.1:{dp}"), format!("127.0.0.1:{ap}"));
    let mut s = Server::start_on(dir.path(), &listen, &admin, &[]);
    let delivery = format!(
        "  delivery:\n    retry: {RETRY}\n    backoffPolicy: linear\n    backoffDelay: PT1S\n    deadLetterSink:\n      uri: {}\n",
        dls.url
    );
    s.apply_ok(&[broker("default", ""), trigger("t", "default", "", &sink.url, &delivery)].join("---\n")).await;
    assert_eq!(send(&s.broker_url("default", "default"), "e0", "t", "{}").await, 202);
    // Attempts 1 and 2 failed and the worker recorded them (its commit tick is 1 s;
    // the wait before attempt 3 is 2 s); kill -9 when attempt 3 arrives.
    sink.wait_until("three attempts", |g| g.len() >= 3).await;
    s.kill();
    let before = sink.count();
    let s = Server::start_on(dir.path(), &listen, &admin, &[]);
    dls.wait_until("the event dead-lettered after the restart", |g| !g.is_empty()).await;
    let attempts = sink.count();
    assert!(attempts > before, "the restarted server attempted the event again");
    // The budget is RETRY + 1 attempts; a restart may add the one in flight when it hit.
    assert!(
        attempts <= RETRY + 2,
        "{attempts} attempts in all ({before} before the kill) against a budget of {}: the restart reset it",
        RETRY + 1
    );
    drop(s);
}
