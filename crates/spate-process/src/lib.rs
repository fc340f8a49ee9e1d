//! Instances as local processes: spawned in their own process group with
//! `PORT` set, tied to Spate's life (`PR_SET_PDEATHSIG`), recorded in the data
//! directory so that a restart after `kill -9` reaps what survived, probed for
//! readiness, and stopped with SIGTERM then SIGKILL after a grace period.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate_api::{ContainerSpec, Readiness};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{0}")]
    Spawn(String),
    #[error(
        "the container has only an image and no container engine can run it ({0}); give a command, or install docker or podman"
    )]
    NoEngine(String),
}

/// The last lines a resource's processes printed (`spate logs service/NAME`, `containersource/NAME`).
#[derive(Default)]
pub struct LogRing {
    lines: Mutex<VecDeque<String>>,
}

const LOG_LINES: usize = 2000;

impl LogRing {
    pub fn push(&self, line: String) {
        let mut g = self.lines.lock().expect("log ring");
        if g.len() == LOG_LINES {
            g.pop_front();
        }
        g.push_back(line);
    }
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("log ring").iter().cloned().collect()
    }
}

/// A free loopback port (bound then released; the instance binds it next).
pub fn free_port() -> Result<u16, ProcessError> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| ProcessError::Spawn(format!("no free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| ProcessError::Spawn(e.to_string()))?.port())
}

/// Where `argv[0]` would be found, or why it cannot be run.
pub fn check_command(c: &ContainerSpec) -> Result<(), String> {
    let Some(prog) = c.argv.first() else { return Err("no command".into()) };
    let found = if prog.contains('/') {
        let p = Path::new(prog);
        let p = match (&c.working_dir, p.is_relative()) {
            (Some(wd), true) => Path::new(wd).join(p),
            _ => p.to_path_buf(),
        };
        p.is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
    };
    if !found {
        return Err(format!("command '{prog}' not found (not a file, and not on PATH)"));
    }
    if let Some(wd) = &c.working_dir
        && !Path::new(wd).is_dir()
    {
        return Err(format!("workingDir '{wd}' is not a directory"));
    }
    Ok(())
}

/// A container engine able to run image-only containers, if one is installed and running.
pub fn container_engine() -> Result<String, String> {
    static ENGINE: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut why = vec![];
            for engine in ["podman", "docker"] {
                match std::process::Command::new(engine)
                    .arg("info")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                {
                    Ok(s) if s.success() => return Ok(engine.to_string()),
                    Ok(_) => why
                        .push(format!("{engine} is installed but its engine does not answer (`{engine} info` failed)")),
                    Err(_) => why.push(format!("{engine} is not installed")),
                }
            }
            Err(why.join("; "))
        })
        .clone()
}

pub struct Spawned {
    pub child: Child,
    pub pgid: i32,
    pub port: u16,
    pid_file: PathBuf,
}

/// What an instance needs to start.
pub struct Launch<'a> {
    pub container: &'a ContainerSpec,
    pub env: Vec<(String, String)>,
    pub label: String,
    pub logs: Arc<LogRing>,
    pub run_dir: &'a Path,
}

pub fn spawn(l: Launch<'_>) -> Result<Spawned, ProcessError> {
    let port = free_port()?;
    let c = l.container;
    let argv: Vec<String> = match &c.image {
        Some(image) if c.argv.is_empty() => {
            let engine = container_engine().map_err(ProcessError::NoEngine)?;
            let inner = c.container_port.unwrap_or(8080);
            let mut a = vec![
                engine,
                "run".into(),
                "--rm".into(),
                "--init".into(),
                "-p".into(),
                format!("127.0.0.1:{port}:{inner}"),
                "-e".into(),
                format!("PORT={inner}"),
            ];
            for (k, v) in c.env.iter().chain(&l.env) {
                a.push("-e".into());
                a.push(format!("{k}={v}"));
            }
            a.push(image.clone());
            a.extend(c.image_args.iter().cloned());
            a
        }
        _ => c.argv.clone(),
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(c.env.iter().cloned())
        .envs(l.env.iter().cloned())
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(wd) = &c.working_dir {
        cmd.current_dir(wd);
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| ProcessError::Spawn(format!("cannot start '{}': {e}", argv[0])))?;
    let pid = child.id().unwrap_or(0) as i32;
    let pid_file = l.run_dir.join(format!("{pid}"));
    if let Err(e) = std::fs::write(&pid_file, start_time(pid).unwrap_or_default().to_string()) {
        tracing::warn!(file = %pid_file.display(), error = %e, "cannot record the instance for reaping after a crash");
    }
    for (stream, name) in [
        (child.stdout.take().map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>), "out"),
        (child.stderr.take().map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>), "err"),
    ] {
        if let Some(s) = stream {
            let (logs, label) = (l.logs.clone(), l.label.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.push(format!("[{label}] {}{line}", if name == "err" { "! " } else { "" }));
                }
            });
        }
    }
    Ok(Spawned { child, pgid: pid, port, pid_file })
}

/// The process's start time in clock ticks (field 22 of /proc/PID/stat): with the pid, its identity.
fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Kills process groups recorded by an earlier run that died without stopping them.
pub fn reap_leftovers(run_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return 0 };
    let mut n = 0;
    for e in entries.flatten() {
        let path = e.path();
        let pid: Option<i32> = path.file_name().and_then(|f| f.to_str()).and_then(|f| f.parse().ok());
        let recorded: Option<u64> = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok());
        if let Some(pid) = pid {
            // The group leader may be gone (PDEATHSIG) while its children live on: kill the group either way,
            // unless the pid now belongs to an unrelated process.
            let same = start_time(pid).is_none_or(|t| Some(t) == recorded);
            if same && pid > 1 {
                // SAFETY: plain syscall.
                if unsafe { libc::kill(-pid, libc::SIGKILL) } == 0 {
                    n += 1;
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    n
}

impl Spawned {
    /// Waits until the instance accepts requests, or fails if it exits or `deadline` passes.
    pub async fn ready(
        &mut self,
        readiness: &Readiness,
        client: &reqwest::Client,
        deadline: Duration,
    ) -> Result<(), String> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited before becoming ready ({status})"));
            }
            let ok = match readiness {
                Readiness::TcpConnect => tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok(),
                Readiness::HttpGet { path } => client
                    .get(format!("http://127.0.0.1:{}{path}", self.port))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
            };
            if ok {
                return Ok(());
            }
            if started.elapsed() > deadline {
                return Err(format!("not ready after {}s", deadline.as_secs()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// SIGTERM to the group, then SIGKILL after `grace`; waits for the exit.
    pub async fn terminate(mut self, grace: Duration) {
        // SAFETY: plain syscalls on our own child's process group.
        unsafe { libc::kill(-self.pgid, libc::SIGTERM) };
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
            let _ = self.child.wait().await;
        }
        // Children of the instance that outlived it.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        let _ = std::fs::remove_file(&self.pid_file);
    }

    /// After an unexpected exit: kill what is left of the group and forget the record.
    pub fn cleanup_after_exit(&self) {
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        let _ = std::fs::remove_file(&self.pid_file);
    }
}
