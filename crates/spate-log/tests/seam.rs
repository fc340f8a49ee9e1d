//! The log seam is async and fallible: consumer positions are visible at
//! once, written off the runtime (coalesced), survive a reopen, are never
//! written again once removed; a commit resolves once its position is
//! written, and a failed write is reported by that commit and the next one,
//! which retries it.

use bytes::Bytes;
use futures_util::FutureExt;
use spate_log::file::{FileBackend, FileLog, FileLogConfig, FsyncPolicy};
use spate_log::{AckState, EventLog, LogBackend};

fn config() -> FileLogConfig {
    FileLogConfig { fsync: FsyncPolicy::Never, ..FileLogConfig::default() }
}

#[test]
fn positions_are_visible_at_once_and_survive_reopen_and_removed_ones_stay_gone() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let n = 5000u64;
    let last = AckState { committed: n - 3, acked: vec![(n - 1, n)], attempts: vec![(n - 3, 7)] };
    let backend = FileBackend::new(tmp.path(), config());
    rt.block_on(async {
        let log = backend.open("b").await.unwrap();
        log.append((0..n).map(|i| Bytes::from(i.to_string())).collect()).await.unwrap();
        // A burst of commits, as a busy trigger makes them: each visible at once.
        for i in 0..n - 3 {
            let state = AckState { committed: i, acked: vec![(i + 2, i + 3)], ..AckState::default() };
            log.commit_state("ns/t", state.clone()).await.unwrap();
            assert_eq!(log.committed_state("ns/t").await.unwrap(), Some(state));
        }
        log.commit_state("ns/t", last.clone()).await.unwrap();
        // A consumer removed right after its first commit is not written back.
        log.commit("ns/gone", 7).await.unwrap();
        log.remove_consumer("ns/gone").await.unwrap();
        assert_eq!(log.committed_state("ns/gone").await.unwrap(), None);
    });
    let closing = std::thread::spawn(move || backend.close_all());
    closing.join().unwrap();
    let files: Vec<String> = std::fs::read_dir(tmp.path().join("b").join("consumers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["ns_2ft.off"], "only the live consumer has a file");

    let backend = FileBackend::new(tmp.path(), config());
    rt.block_on(async {
        let log = backend.open("b").await.unwrap();
        assert_eq!(log.committed_state("ns/t").await.unwrap(), Some(last), "the last position, ranges included");
        assert_eq!(log.committed_state("ns/gone").await.unwrap(), None);
        backend.remove("b").await.unwrap();
    });
    assert!(!tmp.path().join("b").exists(), "remove deletes the log's directory");
}

#[test]
fn a_failed_position_write_is_reported_by_the_next_commit_which_retries_it() {
    // Without a runtime the write runs inline, so the outcome is deterministic.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let log = FileLog::open("l", &dir, config()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(log.append((0..5).map(|i| Bytes::from(vec![i])).collect())).unwrap();
    let cdir = dir.join("consumers");
    std::fs::remove_dir(&cdir).unwrap();
    std::fs::write(&cdir, b"not a directory").unwrap();
    let commit = |c| log.commit("ns/t", c).now_or_never().expect("ready");
    // A commit resolves once its position is written: this one's write fails, and it says so.
    let err = commit(3).expect_err("the failed write is reported");
    assert!(err.to_string().contains("log"), "names where: {err}");
    std::fs::remove_file(&cdir).unwrap();
    std::fs::create_dir(&cdir).unwrap();
    // This commit still reports the previous attempt's failure, and retries.
    commit(3).expect_err("the earlier failure is reported once");
    commit(3).expect("the retry was written");
    log.close();
    drop(log);
    let log = FileLog::open("l", &dir, config()).unwrap();
    assert_eq!(log.committed_state("ns/t").now_or_never().unwrap().unwrap(), Some(AckState::at(3)));
}

#[test]
fn a_commit_resolves_only_once_its_position_is_written() {
    // What a kill -9 finds on disk right after a commit resolved is that position or a
    // later one: a trigger counts a finished delivery as in flight until then.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let config = FileLogConfig { fsync: FsyncPolicy::Always, ..FileLogConfig::default() };
    rt.block_on(async {
        let log = FileLog::open("l", &dir, config).unwrap();
        // Keep the writer busy with appends (each one fdatasync'ed) while positions are committed.
        let busy = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..400u64 {
                    log.append(vec![Bytes::from(i.to_string()); 8]).await.unwrap();
                }
            })
        };
        for i in 1..200u64 {
            let state = AckState { committed: i, acked: vec![(i + 2, i + 3)], ..AckState::default() };
            log.commit_state("ns/t", state.clone()).await.unwrap();
            // The consumer file as a crash would find it: its first 8 bytes are the committed offset.
            let file = std::fs::read(dir.join("consumers").join("ns_2ft.off")).expect("the consumer's file");
            let found = u64::from_le_bytes(file[..8].try_into().unwrap());
            assert!(found >= i, "commit {i} resolved but the disk holds {found}");
        }
        busy.await.unwrap();
    });
}

/// Threads of this process (Linux), to show that open logs cost none.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

#[test]
fn open_logs_cost_no_thread_each() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let backend = FileBackend::new(tmp.path(), config());
    let logs = 300;
    rt.block_on(async {
        // Warm up: the runtime's blocking pool and the housekeeping thread exist before counting.
        backend.open("warm").await.unwrap().append(vec![Bytes::from("x")]).await.unwrap();
    });
    let before = thread_count();
    rt.block_on(async {
        for i in 0..logs {
            let log = backend.open(&format!("b{i}")).await.unwrap();
            assert_eq!(log.append(vec![Bytes::from(format!("e{i}"))]).await.unwrap(), 0);
            log.commit("t", 1).await.unwrap();
        }
    });
    let after = thread_count();
    assert!(before > 0, "/proc/self/task is readable");
    // The blocking pool may grow by a few threads (it ran the opens and drains),
    // never by one per log (the writer thread per log made it `logs` more).
    assert!(after < before + 64, "{logs} open logs took {} threads ({before} -> {after})", after - before);
    let closing = std::thread::spawn(move || backend.close_all());
    closing.join().unwrap();
}
