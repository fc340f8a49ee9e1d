//! The sink of `spate bench`: a bare hyper HTTP/1 server that answers 202,
//! counts what arrives and records end-to-end latency from the `benchsent`
//! extension. It is measurement apparatus sharing the machine with what it
//! measures, so it does as little as possible per request: no routing, no
//! header copies, and its waiter is woken once, when the awaited count is
//! reached, not per event.
//!
//! With `--separate-processes` the sink runs in a child process
//! (`spate bench-part sink`), driven over its stdin and stdout one JSON line
//! per command, so that its cost is not the load generator's.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    received: AtomicU64,
    /// The count `wait_for` awaits; the request that reaches it wakes the waiter.
    target: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    /// When the last event arrived, in nanoseconds since the Unix epoch (0: none yet).
    last_at: AtomicU64,
    notify: Notify,
    /// The status answered (202, or an error to stop the subscriber).
    status: AtomicU16,
}

/// Receives events; cheap to clone.
#[derive(Clone)]
pub struct BenchSink {
    pub url: String,
    state: Arc<State>,
}

impl BenchSink {
    pub async fn start() -> anyhow::Result<BenchSink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the bench sink")?;
        let url = format!("http://{}/", listener.local_addr()?);
        let state = Arc::new(State { status: AtomicU16::new(202), ..State::default() });
        let sink = BenchSink { url, state };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| s.clone().receive(req));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(sink)
    }

    async fn receive(self, req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
        let st = &self.state;
        let status = st.status.load(Ordering::Relaxed);
        let mut resp = Response::new(Empty::new());
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        if status != 202 {
            return Ok(resp);
        }
        let now = super::now_nanos();
        let header = req.headers().get("ce-benchsent").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        // Binary: one event, its send time in the header. Structured: one event in
        // the JSON. A batch: every event of the array counts.
        let (count, sent): (u64, Vec<u64>) = match header {
            Some(sent) => (1, vec![sent]),
            None => match req.into_body().collect().await.map(|b| serde_json::from_slice(&b.to_bytes())) {
                Ok(Ok(serde_json::Value::Array(events))) => {
                    (events.len() as u64, events.iter().filter_map(sent_at).collect())
                }
                Ok(Ok(event)) => (1, sent_at(&event).into_iter().collect()),
                _ => (1, vec![]),
            },
        };
        if !sent.is_empty() {
            st.latencies.lock().expect("lock").extend(sent.iter().map(|s| now.saturating_sub(*s)));
        }
        st.last_at.store(now.max(1), Ordering::Relaxed);
        let n = st.received.fetch_add(count, Ordering::SeqCst) + count;
        let target = st.target.load(Ordering::SeqCst);
        if n >= target && n - count < target {
            st.notify.notify_waiters();
        }
        Ok(resp)
    }

    pub fn reset(&self) {
        self.state.received.store(0, Ordering::SeqCst);
        self.state.latencies.lock().expect("lock").clear();
        self.state.last_at.store(0, Ordering::SeqCst);
    }

    /// Answers `status` to every later request (503: a stopped subscriber).
    pub fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// What arrived since the last reset; hands the latencies over.
    pub fn report(&self) -> SinkReport {
        SinkReport {
            received: self.state.received.load(Ordering::SeqCst),
            last_at: match self.state.last_at.load(Ordering::SeqCst) {
                0 => super::now_nanos(),
                n => n,
            },
            latencies: std::mem::take(&mut *self.state.latencies.lock().expect("lock")),
        }
    }

    /// Waits until `n` events arrived; false after `timeout`.
    pub async fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let st = &self.state;
        let notified = st.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        st.target.store(n, Ordering::SeqCst);
        if st.received.load(Ordering::SeqCst) >= n {
            return true;
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        st.received.load(Ordering::SeqCst) >= n
    }
}

/// The `benchsent` extension of a structured event.
fn sent_at(event: &serde_json::Value) -> Option<u64> {
    event.get("benchsent")?.as_str()?.parse().ok()
}

/// What the sink saw since its last reset.
#[derive(Debug, Serialize, Deserialize)]
pub struct SinkReport {
    pub received: u64,
    /// When the last event arrived (now if none did), in nanoseconds since the Unix epoch.
    pub last_at: u64,
    /// End-to-end latencies in nanoseconds.
    pub latencies: Vec<u64>,
}

/// A command to a sink in a child process, one JSON line on its stdin.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SinkCommand {
    Reset,
    Answer { status: u16 },
    WaitFor { n: u64, timeout_ms: u64 },
    Report,
}

/// The sink of a run: here, or in a child process of its own.
pub enum Sink {
    Here(BenchSink),
    Child(Box<SinkProcess>),
}

pub struct SinkProcess {
    url: String,
    /// Killed when the bench ends (`kill_on_drop`).
    process: tokio::process::Child,
    io: tokio::sync::Mutex<(tokio::process::ChildStdin, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>)>,
}

impl SinkProcess {
    async fn start() -> anyhow::Result<SinkProcess> {
        let exe = std::env::current_exe().context("locating the spate binary")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["bench-part", "sink"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the sink process")?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = lines.next_line().await?.ok_or_else(|| anyhow!("the sink process exited at start"))?;
        let url: String = serde_json::from_str(&first).context("the sink process's first line")?;
        Ok(SinkProcess { url, process: child, io: tokio::sync::Mutex::new((stdin, lines)) })
    }

    async fn call<T: serde::de::DeserializeOwned>(&self, command: SinkCommand) -> anyhow::Result<T> {
        let mut io = self.io.lock().await;
        let mut line = serde_json::to_vec(&command)?;
        line.push(b'\n');
        io.0.write_all(&line).await.context("writing to the sink process")?;
        let answer = io.1.next_line().await?.ok_or_else(|| anyhow!("the sink process exited"))?;
        serde_json::from_str(&answer).context("reading the sink process's answer")
    }
}

impl Sink {
    /// A sink in this process, or (`separate`) in a child process.
    pub async fn start(separate: bool) -> anyhow::Result<Sink> {
        Ok(if separate {
            Sink::Child(Box::new(SinkProcess::start().await?))
        } else {
            Sink::Here(BenchSink::start().await?)
        })
    }

    /// Where the sink runs, for the report.
    pub fn describe(&self) -> String {
        match self {
            Sink::Here(_) => "in the bench process".into(),
            Sink::Child(c) => format!("in its own process (pid {})", c.process.id().unwrap_or(0)),
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Sink::Here(s) => &s.url,
            Sink::Child(c) => &c.url,
        }
    }

    pub async fn reset(&self) -> anyhow::Result<()> {
        match self {
            Sink::Here(s) => {
                s.reset();
                Ok(())
            }
            Sink::Child(c) => c.call(SinkCommand::Reset).await,
        }
    }

    pub async fn answer(&self, status: u16) -> anyhow::Result<()> {
        match self {
            Sink::Here(s) => {
                s.answer(status);
                Ok(())
            }
            Sink::Child(c) => c.call(SinkCommand::Answer { status }).await,
        }
    }

    pub async fn wait_for(&self, n: u64, timeout: Duration) -> anyhow::Result<bool> {
        match self {
            Sink::Here(s) => Ok(s.wait_for(n, timeout).await),
            Sink::Child(c) => c.call(SinkCommand::WaitFor { n, timeout_ms: timeout.as_millis() as u64 }).await,
        }
    }

    pub async fn report(&self) -> anyhow::Result<SinkReport> {
        match self {
            Sink::Here(s) => Ok(s.report()),
            Sink::Child(c) => c.call(SinkCommand::Report).await,
        }
    }
}

/// `spate bench-part sink`: prints the sink's URL as a JSON line, then answers
/// one JSON line per command read from stdin, until stdin closes.
pub async fn serve_child() -> anyhow::Result<()> {
    let sink = BenchSink::start().await?;
    let mut out = tokio::io::stdout();
    say(&mut out, serde_json::json!(sink.url)).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let command: SinkCommand = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => bail!("the sink process got a bad command {line:?}: {e}"),
        };
        let answer = match command {
            SinkCommand::Reset => {
                sink.reset();
                serde_json::Value::Null
            }
            SinkCommand::Answer { status } => {
                sink.answer(status);
                serde_json::Value::Null
            }
            SinkCommand::WaitFor { n, timeout_ms } => {
                serde_json::json!(sink.wait_for(n, Duration::from_millis(timeout_ms)).await)
            }
            SinkCommand::Report => serde_json::to_value(sink.report())?,
        };
        say(&mut out, answer).await?;
    }
    Ok(())
}

/// Writes one JSON line to the parent.
async fn say(out: &mut tokio::io::Stdout, v: serde_json::Value) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(&v)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    Ok(out.flush().await?)
}
